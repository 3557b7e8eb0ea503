"""Shape tables, tensor-parallel sharding and M parsing of lowbit.bench.shapes."""
import pytest

from lowbit.bench.shapes import DEFAULT_M, LinearShape, model_shapes, parse_m, resolve


def dims(shapes):
    return {s.layer: (s.n, s.k) for s in shapes}


def test_llama3_tables_are_n_by_k():
    assert dims(model_shapes("llama3-8b")) == {
        "qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
    assert dims(model_shapes("llama3-70b")) == {
        "qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192), "down": (8192, 28672)}


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_shards_split_column_parallel_n_and_row_parallel_k(tp):
    got = dims(model_shapes(f"llama3-70b-tp{tp}"))
    assert got == {"qkv": (10240 // tp, 8192), "o": (8192, 8192 // tp),
                   "gate_up": (57344 // tp, 8192), "down": (8192, 28672 // tp)}
    assert all(s.model == f"llama3-70b-tp{tp}" for s in model_shapes(f"llama3-70b-tp{tp}"))


def test_shard_rejects_indivisible_dims():
    with pytest.raises(ValueError, match="not divisible"):
        LinearShape("m", "o", 4096, 4096, "row").shard(3)
    with pytest.raises(ValueError):
        LinearShape("m", "qkv", 6144, 4096, "column").shard(0)


def test_resolve_mixes_tables_and_customs_and_drops_duplicates():
    shapes = resolve("llama3-8b, 6144x4096 ,llama3-8b,100x300")
    assert len(shapes) == 6
    assert [s.name for s in shapes[:4]] == ["llama3-8b/qkv", "llama3-8b/o", "llama3-8b/gate_up", "llama3-8b/down"]
    assert (shapes[4].n, shapes[4].k, shapes[4].model) == (6144, 4096, "custom")
    assert (shapes[5].n, shapes[5].k) == (100, 300)


@pytest.mark.parametrize("bad", ["llama3-9b", "llama3-8b-tp3", "12x", "0x128", ""])
def test_resolve_rejects_unknown(bad):
    with pytest.raises(ValueError):
        resolve(bad)


def test_parse_m():
    assert parse_m("8,1,2,2") == [1, 2, 8]
    assert list(DEFAULT_M) == [2**i for i in range(14)]
    for bad in ("", "1,a", "0", "-4"):
        with pytest.raises(ValueError):
            parse_m(bad)
