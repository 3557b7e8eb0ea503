"""Triton kernels. Each module: helpers -> @triton.jit kernel -> config heuristics -> launcher.

Only ``lowbit.ops`` calls these launchers.
"""
