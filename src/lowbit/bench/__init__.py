"""``lowbit bench``: time lowbit ops against baselines (cuBLAS, tinygemm, ...) with a measured speed of light.

Entry point: ``main(argv)`` (also ``python -m lowbit.bench``); ``main(["warmup", ...])`` for cold start.
Modules: shapes (model tables), roofline (SOL math), timing (timers), ceilings (device limits),
cases* (methods), micro (the sweep), results / report / plots (output), warmup (cold start).
Kept import-light: nothing heavy is imported until ``main`` runs.
"""
from __future__ import annotations

from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None, **inject) -> int:
    """Run the benchmark CLI; returns an exit code. ``timer=`` / ``ceilings=`` inject fakes for tests."""
    from .app import main as _main

    return _main(argv, **inject)


__all__ = ["main"]
