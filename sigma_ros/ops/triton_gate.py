"""A channel gate's two-layer MLP in one Triton kernel (inference fast path).

The decoder's channel attention and the fusion blocks' squeeze-excite gates turn pooled statistics into one weight a
channel: sigmoid(W2 SiLU(W1 p)), the attention summing that MLP's output over its mean- and max-pooled inputs
before the sigmoid. On a (batch, C) vector PyTorch runs it as five to seven kernels of a few microseconds each (a
cast, two GEMMs, the SiLU, the sum, the sigmoid), some 90 launches a Sigma-T frame. Here it is one:

    gate[b, c] = sigmoid(sum_j sum_k W2[c, k] SiLU(sum_i W1[k, i] p[b, j, i]))      j over the P pooled vectors

Weights in any float dtype, arithmetic in float32.

``gated_residual`` applies such a gate where the decoder's blocks do, together with their residual:
out = (y * gate) + x * scale, the product rounded to y's dtype as the separate multiply did (two kernels before).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

from .triton_scan import runs_on  # one rule for where the Triton kernels run

__all__ = ["channel_gate", "gated_residual", "runs_on"]


if triton is not None:

    @triton.jit
    def _gate_kernel(p_ptr, w1_ptr, w2_ptr, out_ptr, C, HIDDEN, sp_b, sp_j, P: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr):
        """Program (batch b, block of output channels): the hidden layer in full (it is small), then its block of
        gates."""
        b = tl.program_id(0)
        offs_h = tl.arange(0, BLOCK_H)
        mask_h = offs_h < HIDDEN
        offs_out = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_out = offs_out < C
        w2 = tl.load(w2_ptr + offs_out[:, None] * HIDDEN + offs_h[None, :], mask=mask_out[:, None] & mask_h[None, :],
                     other=0.0).to(tl.float32)
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for j in tl.static_range(P):
            hidden = tl.zeros([BLOCK_H], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                mask_c = offs_c < C
                p = tl.load(p_ptr + b * sp_b + j * sp_j + offs_c, mask=mask_c, other=0.0).to(tl.float32)
                w1 = tl.load(w1_ptr + offs_h[:, None] * C + offs_c[None, :], mask=mask_h[:, None] & mask_c[None, :],
                             other=0.0).to(tl.float32)
                hidden += tl.sum(w1 * p[None, :], axis=1)
            hidden = hidden * tl.sigmoid(hidden)
            acc += tl.sum(w2 * hidden[None, :], axis=1)
        gate = tl.sigmoid(acc)
        tl.store(out_ptr + b * C + offs_out, gate.to(out_ptr.dtype.element_ty), mask=mask_out)

    @triton.jit
    def _gated_residual_kernel(y_ptr, g_ptr, x_ptr, s_ptr, out_ptr, n_rows, H, W, C,
                               sy_b, sy_h, sy_w, sy_c, sx_b, sx_h, sx_w, sx_c,
                               ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
        """Program: ROWS pixels x BLOCK_C channels of (batch, H, W, C) maps in any strides; out is contiguous."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (rows < n_rows)[:, None] & (cols < C)[None, :]
        b, h, w = rows // (H * W), (rows // W) % H, rows % W
        y = tl.load(y_ptr + (b * sy_b + h * sy_h + w * sy_w)[:, None] + cols[None, :] * sy_c, mask=mask, other=0.0)
        g = tl.load(g_ptr + b[:, None] * C + cols[None, :], mask=mask, other=0.0)
        gated = (y.to(tl.float32) * g.to(tl.float32)).to(y_ptr.dtype.element_ty).to(tl.float32)
        x = tl.load(x_ptr + (b * sx_b + h * sx_h + w * sx_w)[:, None] + cols[None, :] * sx_c, mask=mask, other=0.0)
        scale = tl.load(s_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        out = gated + x.to(tl.float32) * scale[None, :]
        tl.store(out_ptr + rows[:, None] * C + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def channel_gate(pooled: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                 out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """pooled (batch, P, C); w1 (hidden, C) and w2 (C, hidden), as Linear weights (1x1 convolution weights may keep
    their trailing 1x1) -> gate (batch, C) in ``out_dtype``; see the module docstring."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    batch, terms, channels = pooled.shape
    w1, w2 = w1.reshape(w1.shape[0], -1).contiguous(), w2.reshape(w2.shape[0], -1).contiguous()
    hidden = w1.shape[0]
    if w1.shape != (hidden, channels) or w2.shape != (channels, hidden):
        raise ValueError(f"weights {tuple(w1.shape)} and {tuple(w2.shape)} do not make a {channels} -> hidden -> "
                         f"{channels} MLP")
    if pooled.stride(2) != 1:
        pooled = pooled.contiguous()
    out = torch.empty((batch, channels), dtype=out_dtype, device=pooled.device)
    block_h = max(16, triton.next_power_of_2(hidden))
    # Tiles of up to 16k weights (64 registers a thread at 8 warps): every program walks all C channels for the
    # hidden layer, so the wide gates (C = 1536) need wide steps to keep that loop short.
    block_c = max(16, min(128, 16384 // block_h))
    _gate_kernel[(batch, triton.cdiv(channels, block_c))](
        pooled, w1, w2, out, channels, hidden, pooled.stride(0), pooled.stride(1), P=terms, BLOCK_H=block_h,
        BLOCK_C=block_c, num_warps=8 if block_h * block_c > 4096 else 4)
    return out


def gated_residual(y: torch.Tensor, gate: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """y * gate[:, None, None, :] + x * scale for channels-last maps y and x (batch, H, W, C) in any strides, a
    gate (batch, C) and a scale (C,): the product in y's dtype, then the sum in the dtype ``torch.addcmul`` would
    give (float32 for a float32 x); see the module docstring. A new contiguous map."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    batch, height, width, channels = y.shape
    if x.shape != y.shape or gate.shape != (batch, channels) or scale.shape != (channels,):
        raise ValueError(f"shapes: y {tuple(y.shape)}, gate {tuple(gate.shape)}, x {tuple(x.shape)}, "
                         f"scale {tuple(scale.shape)}")
    out = torch.empty(y.shape, dtype=torch.promote_types(torch.promote_types(y.dtype, x.dtype), scale.dtype),
                      device=y.device)
    n_rows = batch * height * width
    block_c = min(128, triton.next_power_of_2(channels))
    rows = max(1, 2048 // block_c)
    _gated_residual_kernel[(triton.cdiv(n_rows, rows), triton.cdiv(channels, block_c))](
        y, gate.contiguous(), x, scale.contiguous(), out, n_rows, height, width, channels, *y.stride(), *x.stride(),
        ROWS=rows, BLOCK_C=block_c, num_warps=4)
    return out
