"""Farthest point sampling on CUDA: one Triton program per cloud, all m picks in one launch.

Returns exactly the indices of the pure-torch loop in :mod:`cad3d.geometry.fps` (same float
operations, compiled without fused multiply-add; ``tl.argmax`` breaks ties to the lowest
index). Imports triton, so only load it when triton is installed. The kernel is jit-compiled on
first use, which also lets ``TRITON_INTERPRET=1`` (read then) run it on CPU tensors in tests.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# Clouds up to this size keep coordinates and distances in registers; larger ones stream tiles
# of this size through a global distance buffer.
TILE = 4096


def _fps_kernel(x_ptr, out_ptr, dist_ptr, n, m, start, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """x (B, N, 3) contiguous, out (B, m) int64, dist (B, N) (only used when not ONE_TILE)."""
    b = tl.program_id(0).to(tl.int64)
    xb = x_ptr + b * n * 3
    offs = tl.arange(0, BLOCK)
    far = start + 0 * b  # int64 scalar
    tl.store(out_ptr + b * m, far)
    if ONE_TILE:
        mask = offs < n
        px = tl.load(xb + offs * 3, mask=mask, other=0.0)
        py = tl.load(xb + offs * 3 + 1, mask=mask, other=0.0)
        pz = tl.load(xb + offs * 3 + 2, mask=mask, other=0.0)
        # Padding holds -1 < any distance, so it is never picked.
        dist = tl.where(mask, tl.full([BLOCK], float("inf"), px.dtype), tl.full([BLOCK], -1.0, px.dtype))
        for i in range(1, m):
            cx = tl.load(xb + far * 3)
            cy = tl.load(xb + far * 3 + 1)
            cz = tl.load(xb + far * 3 + 2)
            dx = px - cx
            dy = py - cy
            dz = pz - cz
            d = dx * dx + dy * dy
            d = d + dz * dz
            dist = tl.minimum(dist, d)
            far = tl.argmax(dist, axis=0, tie_break_left=True).to(tl.int64)
            tl.store(out_ptr + b * m + i, far)
    else:
        db = dist_ptr + b * n
        for i in range(1, m):
            cx = tl.load(xb + far * 3)
            cy = tl.load(xb + far * 3 + 1)
            cz = tl.load(xb + far * 3 + 2)
            best = tl.full([], -1.0, cx.dtype)
            besti = far
            for t in range(0, n, BLOCK):
                o = t + offs
                mask = o < n
                dx = tl.load(xb + o * 3, mask=mask, other=0.0) - cx
                dy = tl.load(xb + o * 3 + 1, mask=mask, other=0.0) - cy
                dz = tl.load(xb + o * 3 + 2, mask=mask, other=0.0) - cz
                d = dx * dx + dy * dy
                d = d + dz * dz
                dt = tl.minimum(tl.load(db + o, mask=mask, other=-1.0), d)
                tl.store(db + o, dt, mask=mask)
                dt = tl.where(mask, dt, -1.0)
                tmax = tl.max(dt, axis=0)
                targ = tl.argmax(dt, axis=0, tie_break_left=True).to(tl.int64) + t
                # Strict '>': an earlier tile keeps a tie (lowest index).
                besti = tl.where(tmax > best, targ, besti)
                best = tl.maximum(best, tmax)
            tl.debug_barrier()  # this pick's distance writes are seen by the next pick
            far = besti
            tl.store(out_ptr + b * m + i, far)


@functools.cache
def _compiled(interpret: bool):
    # The interpreter flag is read when the kernel is wrapped, hence one wrapper per mode.
    return triton.jit(_fps_kernel)


def fps_triton(x: torch.Tensor, m: int, start: int) -> torch.Tensor:
    """x (B, N, 3) contiguous float32/float64 on CUDA (or CPU under TRITON_INTERPRET=1)
    -> (B, m) int64 on x's device."""
    from triton import knobs

    kernel = _compiled(bool(knobs.runtime.interpret))
    bsz, n, _ = x.shape
    out = torch.empty(bsz, m, dtype=torch.int64, device=x.device)
    one_tile = n <= TILE
    block = max(16, 1 << (n - 1).bit_length()) if one_tile else TILE
    dist = x.new_empty(1) if one_tile else torch.full((bsz, n), float("inf"), dtype=x.dtype, device=x.device)  # (B, N)
    warps = 8 if block >= 2048 else 4
    kernel[(bsz,)](x, out, dist, n, m, start, BLOCK=block, ONE_TILE=one_tile, num_warps=warps, enable_fp_fusion=False)
    return out
