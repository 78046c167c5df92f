"""The decoder's last LayerNorm and its 1x1 classifier as one op with its backward, for training: per pixel of a
channels-last map x (B, H, W, C), logits = W LN(x) (K classes), returned (B, H, W, K).

x is the final up-sampling's output, the largest map of the network (Sigma-T, batch 8, 480x640: 450 MiB in bf16).
As torch ops, autograd and torch.compile's partitioner keep two such maps for the backward: x for the norm's and
the norm's output for the classifier's weight gradient. Here the forward reads x once and writes only the logits,
and the backward recomputes the norm from x, so one map is kept and neither the normalised map nor its gradient is
written at full resolution. The numerics are autocast's: the norm in float32, its output rounded to x's dtype for
the product, which sums in float32 and is rounded to x's dtype.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

from .triton_scan import _multiprocessors, runs_on  # one rule for where the Triton kernels run

__all__ = ["norm_head", "runs_on"]

# Pixels a program (the backward's: a block of its loop) takes at a time, and warps. Compiled for sm_90 (96 channels,
# bf16): the forward 63 registers; the backward 168, so three programs fit a multiprocessor (with 32 pixels and 8
# warps it needed 172 for one), and none spill; in float32 the backward needs 255 (two a multiprocessor).
_FORWARD_PIXELS, _FORWARD_WARPS, _BACKWARD_PIXELS, _BACKWARD_WARPS = 64, 8, 16, 4
# Triton's CPU interpreter (3.9) multiplies bf16 tiles wrongly: there the products take float32 copies of the same
# (already rounded) values, which is what the tensor cores sum too.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _normalised(x_ptr, offs_p, offs_c, mask_p, mask_c, C, eps):
        """(x_hat, rstd) in float32 of the pixels offs_p (rows) over their C channels (x_hat 0 beyond them)."""
        mask = mask_p[:, None] & mask_c[None, :]
        x = tl.load(x_ptr + offs_p[:, None] * C + offs_c[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        centred = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / C + eps)
        return centred * rstd[:, None], rstd

    @triton.jit
    def _dot(a, b, FLOAT32: tl.constexpr):
        """a @ b summed in float32; FLOAT32: in float32 throughout (no TF32), as for float32 inputs."""
        if FLOAT32:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _norm_head_kernel(x_ptr, gamma_ptr, beta_ptr, w_ptr, out_ptr, P, C, K, eps, BLOCK_P: tl.constexpr,
                          BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, FLOAT32_DOT: tl.constexpr):
        """One program: the logits of BLOCK_P pixels."""
        offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_c, offs_k = tl.arange(0, BLOCK_C), tl.arange(0, BLOCK_K)
        mask_p, mask_c, mask_k = offs_p < P, offs_c < C, offs_k < K
        dtype = out_ptr.dtype.element_ty
        x_hat, _ = _normalised(x_ptr, offs_p, offs_c, mask_p, mask_c, C, eps)
        gamma = tl.load(gamma_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        y = (x_hat * gamma[None, :] + beta[None, :]).to(dtype)
        w_t = tl.load(w_ptr + offs_k[None, :] * C + offs_c[:, None], mask=mask_c[:, None] & mask_k[None, :],
                      other=0.0).to(dtype)  # (BLOCK_C, BLOCK_K)
        logits = _dot(y, w_t, FLOAT32_DOT)
        tl.store(out_ptr + offs_p[:, None] * K + offs_k[None, :], logits.to(dtype),
                 mask=mask_p[:, None] & mask_k[None, :])

    @triton.jit
    def _norm_head_backward_kernel(x_ptr, gamma_ptr, beta_ptr, w_ptr, g_ptr, dx_ptr, dgamma_ptr, dbeta_ptr, dw_ptr,
                                   P, PIXELS_PER_IMAGE, C, K, eps, sg_b, sg_p, sg_k, BLOCK_P: tl.constexpr,
                                   BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, FLOAT32_DOT: tl.constexpr):
        """Persistent programs over blocks of BLOCK_P pixels: dx of each block, and the parameter gradients summed
        over all of a program's blocks, added once at its end."""
        offs_c, offs_k = tl.arange(0, BLOCK_C), tl.arange(0, BLOCK_K)
        mask_c, mask_k = offs_c < C, offs_k < K
        dtype = dx_ptr.dtype.element_ty
        gamma = tl.load(gamma_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_k[:, None] * C + offs_c[None, :], mask=mask_k[:, None] & mask_c[None, :],
                    other=0.0).to(dtype)  # (BLOCK_K, BLOCK_C)
        dgamma = tl.zeros([BLOCK_C], dtype=tl.float32)
        dbeta = tl.zeros([BLOCK_C], dtype=tl.float32)
        dw = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
        for start in range(tl.program_id(0) * BLOCK_P, P, tl.num_programs(0) * BLOCK_P):
            offs_p = start + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            x_hat, rstd = _normalised(x_ptr, offs_p, offs_c, mask_p, mask_c, C, eps)
            y = (x_hat * gamma[None, :] + beta[None, :]).to(dtype)
            g_at = (offs_p // PIXELS_PER_IMAGE) * sg_b + (offs_p % PIXELS_PER_IMAGE) * sg_p
            g = tl.load(g_ptr + g_at[:, None] + offs_k[None, :] * sg_k, mask=mask_p[:, None] & mask_k[None, :],
                        other=0.0).to(dtype)  # (BLOCK_P, BLOCK_K)
            dy = _dot(g, w, FLOAT32_DOT)
            dw += _dot(tl.trans(g), y, FLOAT32_DOT)
            dgamma += tl.sum(dy * x_hat, axis=0)
            dbeta += tl.sum(dy, axis=0)
            dx_hat = dy * gamma[None, :]
            mean_dx_hat = tl.sum(dx_hat, axis=1) / C
            mean_dx_hat_x_hat = tl.sum(dx_hat * x_hat, axis=1) / C
            dx = (dx_hat - mean_dx_hat[:, None] - x_hat * mean_dx_hat_x_hat[:, None]) * rstd[:, None]
            tl.store(dx_ptr + offs_p[:, None] * C + offs_c[None, :], dx.to(dtype),
                     mask=mask_p[:, None] & mask_c[None, :])
        tl.atomic_add(dgamma_ptr + offs_c, dgamma, mask=mask_c)
        tl.atomic_add(dbeta_ptr + offs_c, dbeta, mask=mask_c)
        tl.atomic_add(dw_ptr + offs_k[:, None] * C + offs_c[None, :], dw, mask=mask_k[:, None] & mask_c[None, :])


def _blocks(channels: int, classes: int) -> tuple[int, int]:
    """tl.dot takes dimensions of 16 and more, powers of two."""
    return max(16, triton.next_power_of_2(channels)), max(16, triton.next_power_of_2(classes))


@torch.library.custom_op("sigma_ros::norm_head", mutates_args=())
def norm_head_op(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """Logits (B, H, W, K) in x's dtype of x (B, H, W, C), the norm's gamma and beta (C,), weight (K, C)."""
    x = x.contiguous()
    pixels, channels = x.numel() // x.shape[-1], x.shape[-1]
    classes = weight.shape[0]
    out = x.new_empty((*x.shape[:-1], classes))
    block_c, block_k = _blocks(channels, classes)
    _norm_head_kernel[(triton.cdiv(pixels, _FORWARD_PIXELS),)](
        x, gamma, beta, weight, out, pixels, channels, classes, eps, BLOCK_P=_FORWARD_PIXELS, BLOCK_C=block_c,
        BLOCK_K=block_k, FLOAT32_DOT=x.dtype == torch.float32 or _INTERPRETED, num_warps=_FORWARD_WARPS)
    return out


@norm_head_op.register_fake
def _(x, gamma, beta, weight, eps):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("sigma_ros::norm_head_backward", mutates_args=())
def norm_head_backward_op(g: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                          weight: torch.Tensor, eps: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dgamma, dbeta, dweight) for the logits' gradient g (B, H, W, K), any strides."""
    x = x.contiguous()
    batch, height, width, channels = x.shape
    classes = weight.shape[0]
    if g.stride(1) != width * g.stride(2):  # the kernel walks an image's pixels with one stride
        g = g.contiguous()
    dx = torch.empty_like(x)
    dgamma, dbeta = (torch.zeros(channels, device=x.device, dtype=torch.float32) for _ in range(2))
    dweight = torch.zeros((classes, channels), device=x.device, dtype=torch.float32)
    pixels = batch * height * width
    blocks = triton.cdiv(pixels, _BACKWARD_PIXELS)
    resident = (2 if x.dtype == torch.float32 else 3) * (_multiprocessors(x.device.index or 0) if x.is_cuda else 2)
    block_c, block_k = _blocks(channels, classes)
    _norm_head_backward_kernel[(min(blocks, resident),)](
        x, gamma, beta, weight, g, dx, dgamma, dbeta, dweight, pixels, height * width, channels, classes, eps,
        g.stride(0), g.stride(2), g.stride(3), BLOCK_P=_BACKWARD_PIXELS, BLOCK_C=block_c, BLOCK_K=block_k,
        FLOAT32_DOT=x.dtype == torch.float32 or _INTERPRETED, num_warps=_BACKWARD_WARPS)
    return dx, dgamma.to(gamma.dtype), dbeta.to(beta.dtype), dweight.to(weight.dtype)


@norm_head_backward_op.register_fake
def _(g, x, gamma, beta, weight, eps):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(gamma),
            torch.empty_like(beta), torch.empty_like(weight))


def _setup_context(ctx, inputs, output):
    x, gamma, beta, weight, eps = inputs
    ctx.save_for_backward(x, gamma, beta, weight)
    ctx.eps = eps


def _backward(ctx, g):
    x, gamma, beta, weight = ctx.saved_tensors
    return (*norm_head_backward_op(g, x, gamma, beta, weight, ctx.eps), None)


norm_head_op.register_autograd(_backward, setup_context=_setup_context)


def norm_head(x: torch.Tensor, norm: torch.nn.LayerNorm, head: torch.nn.Conv2d) -> torch.Tensor:
    """``head(norm(x).permute(0, 3, 1, 2))`` for a channels-last x (B, H, W, C) and a bias-free 1x1 ``head``, as
    one op: logits (B, K, H, W) (stored channels-last), in x's dtype."""
    if head.bias is not None or head.kernel_size != (1, 1):
        raise ValueError("norm_head: the classifier must be a bias-free 1x1 convolution")
    return norm_head_op(x, norm.weight, norm.bias, head.weight.flatten(1), norm.eps).permute(0, 3, 1, 2)
