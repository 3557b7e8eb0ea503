"""Deliberate bugs must make the test suite fail. Applies each mutation to a copy of src/, runs the
format/kernel/op tests against it and reports CAUGHT / MISSED.  python scripts/mutation_check.py"""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTATIONS = [  # (name, file, old, new)
    ("nibble order swapped in pack", "formats/intx.py",
     "shifts = (torch.arange(per_word, device=q.device, dtype=torch.int64) * p).view(1, -1, 1)",
     "shifts = (torch.arange(per_word - 1, -1, -1, device=q.device, dtype=torch.int64) * p).view(1, -1, 1)"),
    ("field order swapped in the GEMM/dequant unpack", "kernels/unpack.py",
     "shifts = tl.arange(0, PER) * P", "shifts = (PER - 1 - tl.arange(0, PER)) * P"),
    ("zero point off by one (reference dequantize)", "formats/intx.py",
     "return ((q - z) * s)[:, : self.in_features].to(dtype)", "return ((q - z - 1) * s)[:, : self.in_features].to(dtype)"),
    ("zero point off by one (kernels)", "kernels/unpack.py",
     "z = tl.load(z_ptr + g * stride_sg + offs_n, mask=mask, other=0).to(tl.float32)",
     "z = tl.load(z_ptr + g * stride_sg + offs_n, mask=mask, other=0).to(tl.float32) + 1"),
    ("group index off by one (GEMV)", "kernels/gemv.py",
     "s, z = group_params(s_ptr, z_ptr, k0 // GROUP_LEN, offs_n",
     "s, z = group_params(s_ptr, z_ptr, k0 // GROUP_LEN + (k0 > 0), offs_n"),
    ("scale of the wrong group (GEMM)", "kernels/gemm.py",
     "s, z = group_params(s_ptr, z_ptr, k0 // GROUP_LEN, offs_n, mask_n, stride_sg, HAS_ZEROS, SYM_ZERO)",
     "s, z = group_params(s_ptr, z_ptr, (k0 + BLOCK_K) // GROUP_LEN, offs_n, mask_n, stride_sg, HAS_ZEROS, SYM_ZERO)"),
    ("last partial group dropped (quantize)", "formats/intx.py",
     "w[:, :k] = weight.float()", "w[:, : k // gl * gl] = weight.float()[:, : k // gl * gl]"),
    ("last partial K tile dropped (GEMV)", "kernels/gemv.py",
     "k_tiles = tl.cdiv(K, BLOCK_K)", "k_tiles = K // BLOCK_K"),
]
TESTS = ["tests/test_formats_intx.py", "tests/test_kernels_wxa16.py", "tests/test_ops.py"]


def main() -> int:
    missed = 0
    for name, rel, old, new in MUTATIONS:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(os.path.join(ROOT, "src"), os.path.join(tmp, "src"))
            path = os.path.join(tmp, "src", "lowbit", rel)
            text = open(path).read()
            if text.count(old) < 1:
                print(f"STALE   {name}: pattern not found in {rel}")
                missed += 1
                continue
            open(path, "w").write(text.replace(old, new))
            env = dict(os.environ, PYTHONPATH=os.path.join(tmp, "src"), TRITON_INTERPRET="1")
            r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
                               cwd=ROOT, env=env, capture_output=True, text=True)
            caught = r.returncode != 0
            missed += not caught
            first = next((l for l in r.stdout.splitlines() if l.startswith("FAILED")), "")
            print(f"{'CAUGHT' if caught else 'MISSED'}  {name}  {first[:110]}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
