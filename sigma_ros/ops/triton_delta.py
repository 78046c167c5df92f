"""The scans' step sizes, Δ = softplus(dt_low W_k^T + bias_k), for every direction in one Triton kernel (inference).

Each Mamba block projects its tokens to a low-rank dt (R values a direction), expands that to one value a channel
through the direction's dt projection W_k (D, R), adds the dt bias and takes the softplus. The generic path does the
expansion as one GEMM against the block-diagonal matrix of all directions (K times the work it needs, and a
16-bit output) and leaves bias and softplus to the scan kernel, which computes them in both of its passes. Here one
kernel does it once: a small dot per direction accumulated in float32, the bias added and the softplus taken in
float32 before the single rounding to the output dtype (for 16-bit outputs the scan kernel's fast softplus, within
4e-6 of the exact one, relative; float32 keeps an exact one). So the scan reads the step sizes themselves
(``triton_scan.scan_directions`` with ``delta_bias=None``) and spends none of its per-step instructions on them.

    delta[m, k, d] = softplus(sum_r x[m, k * R + r] * W[k * D + d, k * R + r] + bias[k * D + d])

W is the block-diagonal (K * D, K * R) matrix of the generic path (only its diagonal blocks are read); softplus is
mamba-ssm's: log1p(exp(x)), x itself above 20.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

from .triton_scan import runs_on  # one rule for where the Triton kernels run

__all__ = ["step_sizes", "runs_on"]


if triton is not None:
    from .triton_scan import _softplus  # the scan's fast softplus, for 16-bit outputs

    if os.environ.get("TRITON_INTERPRET") == "1":  # the CPU interpreter multiplies 16-bit tiles as raw integers
        @triton.jit
        def _dot(x, w, EXACT: tl.constexpr):
            return tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
    else:
        @triton.jit
        def _dot(x, w, EXACT: tl.constexpr):
            """EXACT (float32 inputs): exact float32 products; tl.dot would otherwise take TF32."""
            if EXACT:
                return tl.dot(x, w, input_precision="ieee")
            else:
                return tl.dot(x, w)

    @triton.jit
    def _softplus_exact(x):
        """log1p(exp(x)) as precisely as exp(x) comes (Kahan's log1p: log(u) * e / (u - 1) with u = 1 + e, exact
        where u rounds to 1), x itself above 20."""
        e = tl.exp(x)
        u = 1.0 + e
        log1p = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
        return tl.where(x > 20.0, x, log1p)

    @triton.jit
    def _step_sizes_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, M, D, R, KR, sx_m, sy_m, sy_k,
                           BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, EXACT: tl.constexpr):
        """One program: BLOCK_M tokens x BLOCK_D channels of direction k."""
        k = tl.program_id(2)
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_r = tl.arange(0, BLOCK_R)
        mask_m, mask_d, mask_r = offs_m < M, offs_d < D, offs_r < R
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * sx_m + (k * R + offs_r)[None, :],
                    mask=mask_m[:, None] & mask_r[None, :], other=0.0)
        w = tl.load(w_ptr + (k * D + offs_d)[None, :].to(tl.int64) * KR + (k * R + offs_r)[:, None],
                    mask=mask_r[:, None] & mask_d[None, :], other=0.0)
        acc = _dot(x, w, EXACT)
        acc += tl.load(bias_ptr + k * D + offs_d, mask=mask_d, other=0.0)[None, :]
        if EXACT:  # float32 out: the exact softplus (golden parity)
            delta = _softplus_exact(acc)
        else:  # rounded to 16 bits next: the fast one (its division-free form keeps the kernel memory-bound)
            delta = _softplus(acc, True)
        out = y_ptr + offs_m[:, None].to(tl.int64) * sy_m + k * sy_k + offs_d[None, :]
        tl.store(out, delta.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def step_sizes(dt_low: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, directions: int) -> torch.Tensor:
    """dt_low (M, K * R), rows of any stride (a view of the x projection); weight the block-diagonal (K * D, K * R)
    dt projection (or (D, R) for K = 1) in dt_low's dtype; bias (K * D,) -> delta (M, K, D), contiguous, in dt_low's
    dtype (see the module docstring)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    tokens, kr = dt_low.shape
    k = directions
    if weight.dim() != 2 or weight.shape[1] != kr or kr % k or weight.shape[0] % k or bias.numel() != weight.shape[0]:
        raise ValueError(f"dt_low {tuple(dt_low.shape)}, weight {tuple(weight.shape)} and bias {tuple(bias.shape)} "
                         f"do not make {k} directions' dt projections")
    if dt_low.stride(1) != 1 or weight.stride(1) != 1 or weight.stride(0) != kr:
        raise ValueError("dt_low's rows and the weight must be contiguous")
    if weight.dtype != dt_low.dtype:
        raise ValueError(f"dt_low is {dt_low.dtype} but the weight {weight.dtype}")
    dim, rank = weight.shape[0] // k, kr // k
    y = torch.empty((tokens, k, dim), dtype=dt_low.dtype, device=dt_low.device)
    block_m, block_d = 64, max(16, min(64, triton.next_power_of_2(dim)))
    grid = (triton.cdiv(tokens, block_m), triton.cdiv(dim, block_d), k)
    _step_sizes_kernel[grid](dt_low, weight, bias.float().contiguous(), y, tokens, dim, rank, kr, dt_low.stride(0),
                             y.stride(0), y.stride(1), BLOCK_M=block_m, BLOCK_D=block_d,
                             BLOCK_R=max(16, triton.next_power_of_2(rank)), EXACT=dt_low.dtype == torch.float32,
                             num_warps=4)
    return y
