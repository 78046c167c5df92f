"""Global average and max pooling of a channels-last map in one pass (inference fast path).

The decoder's channel attention pools each block's map twice (mean and max over all pixels) and the fusion blocks
pool their projections for the SE gates. PyTorch reduces over the outer dimensions of a channels-last map with
little parallelism (about 15 us a call for a 120x160x96 bf16 map on an H100), once per statistic. Here the pixels
are split over many programs; each reduces its share for a block of channels and merges it into the (batch, 2, C)
float32 result with atomics (max is order-independent; the mean is a sum of partial means, so its last bits may
vary from run to run).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

from .triton_scan import runs_on  # one rule for where the Triton kernels run

__all__ = ["mean_and_max", "runs_on"]


if triton is not None:

    @triton.jit
    def _pool_kernel(x_ptr, out_ptr, P, W, C, PER_PROGRAM, sx_b, sx_h, sx_w, sx_c,
                     PIXELS: tl.constexpr, BLOCK_C: tl.constexpr):
        """Program (pixel chunk, channel block, image): sum and max of PER_PROGRAM pixels, PIXELS at a time."""
        b = tl.program_id(2)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = cols < C
        first = tl.program_id(0) * PER_PROGRAM
        total = tl.zeros([BLOCK_C], dtype=tl.float32)
        largest = tl.full([BLOCK_C], float("-inf"), dtype=tl.float32)
        image = x_ptr + b.to(tl.int64) * sx_b
        for start in range(first, first + PER_PROGRAM, PIXELS):
            pixels = start + tl.arange(0, PIXELS)
            mask = ((pixels < P) & (pixels < first + PER_PROGRAM))[:, None] & mask_c[None, :]
            x = tl.load(image + ((pixels // W) * sx_h + (pixels % W) * sx_w)[:, None] + cols[None, :] * sx_c,
                        mask=mask, other=0.0).to(tl.float32)
            total += tl.sum(x, axis=0)
            largest = tl.maximum(largest, tl.max(tl.where(mask, x, float("-inf")), axis=0))
        tl.atomic_add(out_ptr + b * 2 * C + cols, total / P, mask=mask_c, sem="relaxed")  # partial means add up
        tl.atomic_max(out_ptr + (b * 2 + 1) * C + cols, largest, mask=mask_c, sem="relaxed")


def mean_and_max(x: torch.Tensor) -> torch.Tensor:
    """x (B, H, W, C), any strides -> (B, 2, C) float32: the mean over H and W, then the max."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    batch, height, width, channels = x.shape
    pixels_total = height * width
    out = torch.empty((batch, 2, channels), dtype=torch.float32, device=x.device)
    out[:, 0].zero_()
    out[:, 1].fill_(float("-inf"))
    block_c = min(64, triton.next_power_of_2(channels))
    pixels = max(1, min(64, triton.next_power_of_2(pixels_total)))
    per_program = max(pixels, triton.cdiv(pixels_total, 256) // pixels * pixels)  # up to ~256 chunks an image
    grid = (triton.cdiv(pixels_total, per_program), triton.cdiv(channels, block_c), batch)
    _pool_kernel[grid](x, out, pixels_total, width, channels, per_program, *x.stride(),
                       PIXELS=pixels, BLOCK_C=block_c, num_warps=4)
    return out
