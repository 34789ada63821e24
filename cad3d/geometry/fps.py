"""Farthest point sampling: a compiled kernel per device and the pure-torch reference loop.

Every backend returns the same indices for the same input: the first pick is ``start``, each
next pick is the point with the largest squared distance to the picks so far (``dist =
min(dist, (dx*dx + dy*dy) + dz*dz)``, computed in float32, or float64 for float64 input),
ties go to the lowest index. ``backend="auto"`` uses the numba kernel on CPU
(:mod:`cad3d.geometry.fps_cpu`), the Triton kernel on CUDA (:mod:`cad3d.geometry.fps_cuda`)
and the torch loop elsewhere, or with a warning when a compiler is missing.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from cad3d.geometry._common import _as_batched, compute_dtype, cpu_kernels

BACKENDS = ("auto", "numba", "triton", "torch")
_unavailable: dict[str, str] = {}  # "triton" -> why it failed once (then not tried again)


def _check(x: torch.Tensor, m: int, start) -> tuple[torch.Tensor, bool, int]:
    """-> (x as float32/float64 (B, N, 3), unbatched flag, start index)."""
    x3, unbatched = _as_batched(x, "x")
    if x3.shape[-1] != 3 or not x3.is_floating_point():
        raise ValueError(f"x must be float points (B, N, 3) or (N, 3), got {tuple(x.shape)} {x.dtype}")
    n = x3.shape[1]
    if not 1 <= m <= n:
        raise ValueError(f"m must be in [1, {n}], got {m}")
    if start == "first":
        start_idx = 0
    elif isinstance(start, (int, np.integer)) and not isinstance(start, bool) and 0 <= int(start) < n:
        start_idx = int(start)
    else:
        raise ValueError(f"start must be 'first' or an index in [0, {n}), got {start!r}")
    return x3.detach().to(compute_dtype(x3)), unbatched, start_idx


def farthest_point_sample(x: torch.Tensor, m: int, *, start: str | int = "first", backend: str = "auto") -> torch.Tensor:
    """Farthest point sampling: indices of ``m`` points, each the farthest (Euclidean) from the
    ones picked before it.

    Args:
        x: (B, N, 3) or (N, 3) float points of any float dtype (computed in float32; float64
            stays float64), any strides, finite coordinates.
        m: number of samples, 1 <= m <= N (more raises ValueError).
        start: ``"first"`` (index 0) or an int index of the first sample (same for every cloud).
        backend: ``"auto"``, or one of ``"numba"`` (CPU), ``"triton"`` (CUDA; CPU tensors only
            under ``TRITON_INTERPRET=1``), ``"torch"`` (the reference loop, any device).

    Returns:
        (B, m) (or (m,)) long indices on x's device, identical for every backend. Deterministic:
        ties go to the lowest index, as in a naive ``argmax`` loop. With fewer than m distinct
        points the remaining picks repeat points at distance 0 (the lowest such index).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    x3, unbatched, start_idx = _check(x, m, start)
    out = None
    if backend == "auto":
        kind = {"cpu": "numba", "cuda": "triton"}.get(x3.device.type)
        if kind is not None and kind not in _unavailable:
            out = _compiled(kind, x3, m, start_idx)
    elif backend != "torch":
        out = _compiled(backend, x3, m, start_idx, strict=True)
    if out is None:
        out = _fps_torch(x3, m, start_idx)
    return out.squeeze(0) if unbatched else out


def farthest_point_sample_reference(x: torch.Tensor, m: int, *, start: str | int = "first") -> torch.Tensor:
    """The pure-torch loop (``backend="torch"``): the reference the kernels are tested against."""
    return farthest_point_sample(x, m, start=start, backend="torch")


def _compiled(kind: str, x3: torch.Tensor, m: int, start: int, strict: bool = False) -> torch.Tensor | None:
    """Run the numba or Triton kernel; None when its compiler is missing (or, for Triton,
    fails on this machine: one warning, then the torch loop), unless ``strict``."""
    if kind == "numba":
        if x3.device.type != "cpu":
            raise ValueError(f"the numba backend needs a CPU tensor, got {x3.device}")
        kernels = cpu_kernels()
        if kernels is None:
            if strict:
                raise ImportError("the numba backend needs numba")
            return None
        out = kernels.fps(x3.contiguous().numpy(), m, start, threads=torch.get_num_threads())  # (B, m)
        return torch.from_numpy(out)
    try:
        from cad3d.geometry.fps_cuda import fps_triton

        return fps_triton(x3.contiguous(), m, start)
    except Exception as e:  # triton missing, or its compiler failing on this GPU / driver
        if strict:
            raise
        _unavailable[kind] = f"{type(e).__name__}: {e}"
        warnings.warn(f"farthest_point_sample: the Triton kernel is unavailable ({_unavailable[kind]}); using the torch loop", RuntimeWarning, stacklevel=3)
        return None


def _fps_torch(x3: torch.Tensor, m: int, start_idx: int) -> torch.Tensor:
    """The reference loop on x3 (B, N, 3) float32/float64 -> (B, m) long.

    Vectorized over the batch; the loop runs over m with preallocated buffers and in-place
    updates. The argmax over N is a max per block of ~sqrt(N) points followed by an argmax
    inside the first winning block (a plain argmax over N is several times slower on CPU).
    """
    bsz, n, _ = x3.shape
    dev = x3.device
    bs = max(1, math.isqrt(n - 1) + 1)  # block size ~ sqrt(N)
    nb = -(-n // bs)
    n_pad = nb * bs
    xt = torch.empty(3, bsz, n_pad, dtype=x3.dtype, device=dev)  # coordinate-major (3, B, Np)
    xt[:, :, :n] = x3.permute(2, 0, 1)
    xt[:, :, n:] = x3[:, :1].permute(2, 0, 1)
    # Padding entries hold -1 < any real distance, so they are never picked.
    dist = torch.full((bsz, n_pad), math.inf, dtype=x3.dtype, device=dev)  # (B, Np)
    dist[:, n:] = -1.0
    dist_blocks = dist.view(bsz, nb, bs)
    buf = torch.empty_like(xt)  # (3, B, Np)
    b0, b1, b2 = buf.unbind(0)
    d = torch.empty(bsz, n_pad, dtype=x3.dtype, device=dev)  # (B, Np)
    idx = torch.empty(m, bsz, dtype=torch.long, device=dev)
    far = torch.full((bsz,), start_idx, dtype=torch.long, device=dev)  # (B,)
    idx[0] = far
    for i in range(1, m):
        c = torch.gather(xt, 2, far.view(1, bsz, 1).expand(3, bsz, 1))  # (3, B, 1)
        torch.sub(xt, c, out=buf)
        buf.mul_(buf)
        torch.add(b0, b1, out=d)
        d.add_(b2)  # (B, Np) squared distance to the last pick
        torch.minimum(dist, d, out=dist)
        blk = dist_blocks.amax(dim=2).argmax(dim=1)  # (B,) first block holding the max
        inside = torch.gather(dist_blocks, 1, blk.view(bsz, 1, 1).expand(bsz, 1, bs)).view(bsz, bs)
        torch.add(inside.argmax(dim=1), blk, alpha=bs, out=idx[i])  # global index, (B,)
        far = idx[i]
    return idx.t().contiguous()  # (B, m)
