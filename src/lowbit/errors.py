"""Typed errors raised by lowbit."""


class LowbitError(Exception):
    """Base class of every lowbit error."""


class UnsupportedError(LowbitError, NotImplementedError):
    """The inputs are valid torch values but no lowbit backend can run them.

    The message names the violated constraint (shape, group size, dtype, device, capability).
    """


class FormatError(LowbitError, ValueError):
    """Invalid format parameters or malformed packed tensors."""


class InputError(LowbitError, ValueError):
    """An activation / bias does not match the weight (shape, dtype, device)."""


class ShardError(FormatError):
    """A tensor-parallel shard is impossible: the sharded dim is not divisible by the world size, or a
    shard boundary would cut a quantization group / scale block. The message names the unit, the dim
    and the world size."""
