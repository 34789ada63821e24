"""Shared helpers of the batched point-cloud ops: batching, argument checks, the chunked
pairwise-distance ranking (one (B, rows, M) block at a time, never the full matrix) and the
loader of the compiled CPU kernels.
"""

from __future__ import annotations

import functools
import warnings

import torch

# Entries of one pairwise-distance block when chunk_size is None: 2**21 float32 = 8 MiB, large
# enough that the matmul dominates the loop overhead, small enough to stay cache-friendly
# (measured on CPU: 1-4 Mi entries per block are equally fast, 16 Mi and more get slower).
_BLOCK_ELEMENTS = 1 << 21


def _as_batched(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """(N, C) -> (1, N, C) and a flag saying the input was unbatched; (B, N, C) unchanged."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 2:
        return x.unsqueeze(0), True
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, N, C) or (N, C), got {tuple(x.shape)}")
    return x, False


def _check_pair(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape[0] != b.shape[0] or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{na} {tuple(a.shape)} and {nb} {tuple(b.shape)} differ in batch or channel size")
    if a.shape[1] == 0 or b.shape[1] == 0:
        raise ValueError(f"empty point cloud: {na} {tuple(a.shape)}, {nb} {tuple(b.shape)}")


def _chunk_rows(chunk_size: int | None, batch: int, cols: int) -> int:
    if chunk_size is None:
        return max(1, _BLOCK_ELEMENTS // max(1, batch * cols))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def _rank_block(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """``|b_j|^2 - 2 a_i . b_j`` (B, n, m) for a (B, n, 3), b (B, m, 3), b_sq (B, m): the squared
    distance minus the per-row constant ``|a_i|^2``, so it ranks the b points of each row
    exactly as the distance does. Only used for ranking, never returned as a distance."""
    return torch.baddbmm(b_sq.unsqueeze(1), a, b.transpose(1, 2), alpha=-2.0)  # (B, n, m)


def _centered(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached copies of a and b shifted by a common centre (distances unchanged), which keeps
    the |a|^2 + |b|^2 - 2ab expansion accurate for clouds far from the origin."""
    shift = a.detach().mean(dim=1, keepdim=True)  # (B, 1, 3)
    return a.detach() - shift, b.detach() - shift


def _gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), idx (B, *S) long -> (B, *S, C)."""
    b, _, c = x.shape
    flat = idx.reshape(b, -1, 1).expand(-1, -1, c)  # (B, prod(S), C)
    return torch.gather(x, 1, flat).reshape(*idx.shape, c)


@functools.cache
def cpu_kernels():
    """The numba kernels (:mod:`cad3d.geometry.cpu_kernels`), or None (after one warning) when
    numba is not installed or cannot cache (no writable cache directory); callers then use
    their torch code."""
    try:
        from cad3d.geometry import cpu_kernels as kernels
    except (ImportError, RuntimeError) as e:
        warnings.warn(f"numba is unavailable ({e}); geometry ops use their slower torch code on CPU", RuntimeWarning, stacklevel=3)
        return None
    return kernels


def compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (the dtype the compiled kernels use)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32
