"""SiLU(depthwise 3x3 convolution + bias) of a channels-last map in one Triton kernel (inference fast path).

Every Mamba block of Sigma runs its inner features through a depthwise 3x3 convolution (padding 1, bias) and a
SiLU. cuDNN does that as three kernels: the convolution, a broadcast bias add (PyTorch adds a cuDNN convolution's
bias separately) and the SiLU, each a full pass over the map. Here it is one pass: each program loads a tile of
(pixels of one row, channels) for each of the 9 taps (neighbouring tiles overlap, so the taps mostly hit the
cache), accumulates in float32 and writes SiLU(acc + bias) in the input's dtype.

    y[b, h, w, c] = SiLU(bias[c] + sum_{i,j} weight[c, 0, i, j] * x[b, h + i - 1, w + j - 1, c])   (zero padding)
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

from .triton_scan import runs_on  # one rule for where the Triton kernels run

__all__ = ["depthwise_conv3x3_silu", "runs_on"]


if triton is not None:

    @triton.jit
    def _dwconv3x3_silu_kernel(x_ptr, w_ptr, b_ptr, y_ptr, H, W, C, sx_b, sx_h, sx_w, sx_c,
                               BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
        """One program: BLOCK_W pixels of row h of one image x BLOCK_C channels."""
        h = tl.program_id(1)
        c_blocks = tl.cdiv(C, BLOCK_C)
        b = tl.program_id(2) // c_blocks
        offs_w = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
        offs_c = (tl.program_id(2) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        image = x_ptr + b.to(tl.int64) * sx_b
        acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
        for i in tl.static_range(3):
            row = offs_w * 0 + (h + i - 1)  # per element: Triton's interpreter (the tests) rejects scalar masks
            row_inside = (row >= 0) & (row < H)
            for j in tl.static_range(3):
                col = offs_w + j - 1
                inside = row_inside & (col >= 0) & (col < W)
                x = tl.load(image + row[:, None] * sx_h + col[:, None] * sx_w + offs_c[None, :] * sx_c,
                            mask=inside[:, None] & mask_c[None, :], other=0.0)
                w = tl.load(w_ptr + offs_c * 9 + (i * 3 + j), mask=mask_c, other=0.0)
                acc += x.to(tl.float32) * w.to(tl.float32)[None, :]
        acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
        y = acc * tl.sigmoid(acc)
        out = y_ptr + ((b.to(tl.int64) * H + h) * W + offs_w[:, None]) * C + offs_c[None, :]
        tl.store(out, y.to(y_ptr.dtype.element_ty), mask=(offs_w < W)[:, None] & mask_c[None, :])


def depthwise_conv3x3_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (B, H, W, C), any strides; weight (C, 1, 3, 3); bias (C,) -> contiguous (B, H, W, C) in x's dtype."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    batch, height, width, channels = x.shape
    if weight.shape != (channels, 1, 3, 3) or bias is None or bias.shape != (channels,):
        raise ValueError(f"a depthwise 3x3 convolution with bias over {channels} channels expected, got weight "
                         f"{tuple(weight.shape)}, bias {None if bias is None else tuple(bias.shape)}")
    weight = weight.contiguous()
    y = torch.empty((batch, height, width, channels), dtype=x.dtype, device=x.device)
    block_c = min(64, triton.next_power_of_2(channels))
    block_w = min(32, triton.next_power_of_2(width))
    grid = (triton.cdiv(width, block_w), height, batch * triton.cdiv(channels, block_c))
    _dwconv3x3_silu_kernel[grid](x, weight, bias, y, height, width, channels, *x.stride(),
                                 BLOCK_W=block_w, BLOCK_C=block_c, num_warps=4)
    return y
