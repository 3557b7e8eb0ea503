"""Merge tuned entries into a shipped table: entries of NEW replace OLD's for the same (bits, m, n, k).
    python scripts/merge_tables.py OLD.json NEW.json OUT.json"""
import json
import sys

old, new, out = (json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3])
if old["gpu"] != new["gpu"]:
    sys.exit(f"GPU mismatch: {old['gpu']} vs {new['gpu']}")
keys = {(e["bits"], e["m"], e["n"], e["k"]) for e in new["entries"]}
old["entries"] = [e for e in old["entries"] if (e["bits"], e["m"], e["n"], e["k"]) not in keys] + new["entries"]
old.setdefault("history", []).append({"merged": sys.argv[2], "entries": len(new["entries"])})
json.dump(old, open(out, "w"), indent=1)
print(f"{out}: {len(old['entries'])} entries")
