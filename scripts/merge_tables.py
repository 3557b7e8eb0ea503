"""Merge tuned entries into a shipped table: an entry of NEW replaces OLD's entry of the same kernel and
problem (kernel, bits, m, n, k); OLD's entries of other kernels for that problem stay (a later lookup of
that kernel still finds them) but lose their ``best`` flag when NEW names the winner of the problem.
    python scripts/merge_tables.py OLD.json NEW.json OUT.json"""
import json
import sys

old, new, out = (json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3])
new = new.get("table", new)  # scripts/pipeline_probe.py writes {"table": ..., "rows": ...}
if old["gpu"] != new["gpu"]:
    sys.exit(f"GPU mismatch: {old['gpu']} vs {new['gpu']}")


def problem(e):
    return e["bits"], e["m"], e["n"], e["k"]


replaced = {(e["kernel"],) + problem(e) for e in new["entries"]}
new_best = {problem(e) for e in new["entries"] if e.get("best")}
kept = []
for e in old["entries"]:
    if (e["kernel"],) + problem(e) in replaced:
        continue
    if problem(e) in new_best and e.get("best"):
        e = {**e, "best": False}
    kept.append(e)
old["entries"] = kept + new["entries"]
old.setdefault("history", []).append({"merged": sys.argv[2], "entries": len(new["entries"])})
json.dump(old, open(out, "w"), indent=1)
print(f"{out}: {len(old['entries'])} entries")
