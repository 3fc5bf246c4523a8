"""Host-memory policy for memory-saving runs on CPU.

With activation checkpointing on CPU, a backward pass allocates and frees hundreds of MB of
tensors of 1-4 MB (recomputed activations, per-layer weight gradients) in an order that leaves
glibc's heap holding pages it no longer uses: SmolLM2-135M's peak resident memory sits about
0.35 GB above what the run really holds. Serving blocks of 1 MB and more with ``mmap`` returns
them to the system as soon as they are freed, at the cost of fresh page faults (about a quarter
more time per training step on 2 cores), which is the trade a run asks for when it turns
checkpointing on. Without glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def return_freed_blocks_at_once(threshold_bytes: int = 1 << 20) -> bool:
    """Have glibc serve allocations of ``threshold_bytes`` and more by ``mmap``; True if it took."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
