"""Dev probe: the MoE module GPU tests with the grouped packed 4-bit path off or on (python scripts/moe_ab_probe.py off|on)."""
import sys, pytest
import lowbit.kernels.grouped as g
if sys.argv[1] == "off":
    g.packed_applies = lambda *a, **k: False
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_moe_module.py", "-k", "gpu_bf16 or state_dict", "--tb=short", "-W", "ignore"]))
