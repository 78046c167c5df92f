"""LayerNorm over the channels of channels-last maps in one Triton kernel (inference fast path).

Under autocast, PyTorch runs every LayerNorm in float32 and the next Linear casts the result back to bf16/fp16:
two passes over a float32 map where one would do. Sigma has about 95 LayerNorms a forward, and SS2D adds its two
scan orders and gates the normalised sum by SiLU(z) around one of them. This kernel reads its inputs in whatever
dtype and strides they come in, keeps the statistics in float32, and writes the dtype its consumer needs:

    y = LayerNorm(x [+ other]) [* SiLU(gate)] [* scale]

x and other may each come with a twin, added first: LayerNorm((x + x_twin) + (other + other_twin)). The fused scan
stores a reversed direction's output apart from its forward twin's (``triton_scan.scan_directions(twins_apart=True)``),
so this kernel's loads do the sums its atomic adds would have done, in the same order.

x, other and gate are (batch, H, W, C) maps (other, for instance, the transposed view of SS2D's column-order scan);
inputs of another rank are viewed as such. ``scale`` (batch, C) multiplies each map's channels (ConMB's cross-modal
squeeze-excite gates). The result is a new contiguous tensor of x's shape, or ``out``, any view of that shape (ConMB
writes its two gated norms into the halves of its out-projection's input, so no product, concatenation or cast
runs after them).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

from .triton_scan import runs_on  # one rule for where the Triton kernels run

__all__ = ["layer_norm", "runs_on"]


if triton is not None:

    @triton.jit
    def _row_offsets(rows, H, W, s_b, s_h, s_w):
        return (rows // (H * W)) * s_b + ((rows // W) % H) * s_h + (rows % W) * s_w

    @triton.jit
    def _layer_norm_kernel(
        x_ptr, other_ptr, xt_ptr, ot_ptr, gate_ptr, scale_ptr, w_ptr, b_ptr, y_ptr, n_rows, H, W, C, eps,
        sx_b, sx_h, sx_w, sx_c, so_b, so_h, so_w, so_c, sg_b, sg_h, sg_w, sg_c, sy_b, sy_h, sy_w, sy_c,
        HAS_OTHER: tl.constexpr, HAS_GATE: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_TWINS: tl.constexpr,
        ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS).to(tl.int64)
        cols = tl.arange(0, BLOCK_C)
        mask = (rows < n_rows)[:, None] & (cols < C)[None, :]
        x_at = _row_offsets(rows, H, W, sx_b, sx_h, sx_w)[:, None] + cols[None, :] * sx_c
        x = tl.load(x_ptr + x_at, mask=mask, other=0.0).to(tl.float32)
        if HAS_TWINS:  # a twin has its partner's strides
            x += tl.load(xt_ptr + x_at, mask=mask, other=0.0).to(tl.float32)
        if HAS_OTHER:
            o_at = _row_offsets(rows, H, W, so_b, so_h, so_w)[:, None] + cols[None, :] * so_c
            o = tl.load(other_ptr + o_at, mask=mask, other=0.0).to(tl.float32)
            if HAS_TWINS:
                o += tl.load(ot_ptr + o_at, mask=mask, other=0.0).to(tl.float32)
            x += o
        mean = tl.sum(x, axis=1) / C
        centred = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / C + eps)
        weight = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        y = centred * rstd[:, None] * weight[None, :] + bias[None, :]
        if HAS_GATE:
            g = tl.load(gate_ptr + _row_offsets(rows, H, W, sg_b, sg_h, sg_w)[:, None] + cols[None, :] * sg_c,
                        mask=mask, other=0.0).to(tl.float32)
            y = y * g * tl.sigmoid(g)
        if HAS_SCALE:
            y *= tl.load(scale_ptr + (rows // (H * W))[:, None] * C + cols[None, :], mask=mask, other=0.0)
        tl.store(y_ptr + _row_offsets(rows, H, W, sy_b, sy_h, sy_w)[:, None] + cols[None, :] * sy_c,
                 y.to(y_ptr.dtype.element_ty), mask=mask)


def _as_maps(t: torch.Tensor) -> torch.Tensor:
    """View (..., C) as (batch, H, W, C) without copying where the strides allow."""
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t.flatten(0, t.dim() - 4) if t.dim() > 4 else t


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               other: torch.Tensor | None = None, gate: torch.Tensor | None = None,
               out_dtype: torch.dtype | None = None, scale: torch.Tensor | None = None,
               out: torch.Tensor | None = None, x_twin: torch.Tensor | None = None,
               other_twin: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm((x + x_twin) + (other + other_twin)) * SiLU(gate) * scale over the last dimension; see the module
    docstring. A twin has its partner's shape and strides; with ``other``, both twins or neither. The result is
    written to ``out`` where given (its dtype, not ``out_dtype``)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    channels = x.shape[-1]
    for t in (other, gate, out, x_twin, other_twin):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"shape mismatch: {tuple(t.shape)} against x {tuple(x.shape)}")
    twins = x_twin is not None
    if (other_twin is not None) != (twins and other is not None):
        raise ValueError("twins: give x_twin, and other_twin exactly when other is given")
    for partner, twin in ((x, x_twin), (other, other_twin)):
        if twin is not None and twin.stride() != partner.stride():
            raise ValueError(f"a twin needs its partner's strides: {twin.stride()} against {partner.stride()}")
    maps = _as_maps(x)
    other_maps = _as_maps(other) if other is not None else maps
    gate_maps = _as_maps(gate) if gate is not None else maps
    y = out if out is not None else torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    batch, height, width, _ = maps.shape
    if scale is not None:
        if scale.shape != (batch, channels):
            raise ValueError(f"scale must be (batch, channels) = {(batch, channels)}, got {tuple(scale.shape)}")
        scale = scale.float().contiguous()
    n_rows = batch * height * width
    block_c = triton.next_power_of_2(channels)
    rows = max(1, 2048 // block_c)
    _layer_norm_kernel[(triton.cdiv(n_rows, rows),)](
        maps, other_maps, _as_maps(x_twin) if twins else maps, _as_maps(other_twin) if other_twin is not None else maps,
        gate_maps, scale if scale is not None else weight, weight, bias, y, n_rows, height, width,
        channels, eps, *maps.stride(), *other_maps.stride(), *gate_maps.stride(), *_as_maps(y).stride(),
        HAS_OTHER=other is not None, HAS_GATE=gate is not None, HAS_SCALE=scale is not None, HAS_TWINS=twins,
        ROWS=rows,
        BLOCK_C=block_c,
        num_warps=4 if block_c * rows <= 2048 else 8,
    )
    return y
