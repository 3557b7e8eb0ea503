"""lowbit: low-bit matmul kernels for LLM inference in pure Python (PyTorch + Triton)."""
from .errors import FormatError, InputError, LowbitError, UnsupportedError
from .formats import IntxFormat, IntxWeight, get_format

__version__ = "0.1.0"

__all__ = [
    "FormatError", "InputError", "LowbitError", "UnsupportedError",
    "IntxFormat", "IntxWeight", "get_format", "__version__",
]
