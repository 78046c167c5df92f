"""The scans' step sizes in one Triton kernel (GPU fast path), against the dt projection's GEMM and torch's softplus:
compiled on a GPU, else run by Triton's CPU interpreter (conftest turns it on where there is no GPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernel(triton_ops):
    """ops.triton_delta, its kernels compiled for the GPU or run by Triton's interpreter on the CPU."""
    return triton_ops("triton_delta")


def _projection(g, tokens, directions, rank, dim, width_pad=5):
    """dt_low as the model hands it (the first K*R columns of a wider projection: strided rows), the block-diagonal
    dt projection and the bias."""
    wide = torch.randn(tokens, directions * rank + width_pad, generator=g)
    weights = [torch.randn(dim, rank, generator=g) for _ in range(directions)]
    bias = torch.randn(directions * dim, generator=g) - 4.0  # dt biases sit near softplus^-1(0.01)
    return wide[:, :directions * rank], torch.block_diag(*weights), bias


@pytest.mark.parametrize("tokens,directions,rank,dim", [(70, 4, 3, 5), (130, 2, 6, 40), (9, 1, 17, 80)])
def test_step_sizes_equal_softplus_of_the_dt_projection(kernel, tokens, directions, rank, dim):
    """float32: every direction's block of the projection, plus its bias, through softplus; ragged token, channel
    and rank tiles; K = 1 (CroMB) takes a plain (D, R) weight."""
    g = torch.Generator().manual_seed(tokens)
    dt_low, weight, bias = _projection(g, tokens, directions, rank, dim)
    expected = F.softplus(F.linear(dt_low.double(), weight.double()) + bias.double()).view(tokens, directions, dim)
    delta = kernel.step_sizes(dt_low.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), directions).cpu()
    assert delta.shape == (tokens, directions, dim) and delta.dtype == torch.float32 and delta.is_contiguous()
    assert ((delta.double() - expected).abs() / expected).max().item() < 1e-5  # exact float32 products, no TF32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softplus_holds_its_relative_precision_over_the_whole_range(kernel, dtype):
    """log1p(exp(x)) where 1 + exp(x) rounds (x far below zero: the step size is exp(x), not 0), in between, and the
    identity above 20. float32: as precise as exp(x) itself, which the GPU computes as 2^(x log2 e), with a relative
    error growing with |x|. bf16: the fast softplus, then one rounding (Triton's interpreter truncates: one ulp)."""
    x = torch.cat([torch.linspace(-60.0, -15.0, 50), torch.linspace(-15.0, 20.0, 100), torch.linspace(20.0, 40.0, 9)])
    dt_low = x[:, None].to(dtype)  # rank 1, weight 1, bias 0: delta = softplus(x)
    weight = torch.ones(1, 1, dtype=dtype, device=DEVICE)
    delta = kernel.step_sizes(dt_low.to(DEVICE), weight, torch.zeros(1, device=DEVICE), 1).cpu().flatten().double()
    expected = F.softplus(dt_low.flatten().double())
    bound = 1e-7 * (4 + x.double().abs()) if dtype == torch.float32 else 2.0**-7
    assert ((delta - expected).abs() / expected <= bound).all()


def test_half_precision_rounds_once_after_the_softplus(kernel):
    """bf16 in, bf16 out: the float32 result of the same bf16 values, rounded once: within one bf16 ulp (2^-7,
    relative; the GPU rounds to nearest, half that, Triton's interpreter truncates)."""
    g = torch.Generator().manual_seed(3)
    dt_low, weight, bias = _projection(g, 100, 4, 6, 24)
    dt_low, weight = dt_low.to(torch.bfloat16), weight.to(torch.bfloat16)
    expected = F.softplus(F.linear(dt_low.double(), weight.double()) + bias.double()).view(100, 4, 24)
    delta = kernel.step_sizes(dt_low.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), 4).cpu()
    assert delta.dtype == torch.bfloat16
    assert ((delta.double() - expected).abs() / expected).max().item() <= 2.0**-7


def test_step_sizes_reject_what_they_cannot_take(kernel):
    g = torch.Generator().manual_seed(4)
    dt_low, weight, bias = _projection(g, 10, 4, 3, 5)
    dt_low, weight, bias = dt_low.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE)
    with pytest.raises(ValueError, match="do not make 3 directions"):
        kernel.step_sizes(dt_low, weight, bias, 3)
    with pytest.raises(ValueError, match="do not make"):
        kernel.step_sizes(dt_low, weight, bias[:-1], 4)
    with pytest.raises(ValueError, match="contiguous"):
        kernel.step_sizes(dt_low.t().contiguous().t(), weight, bias, 4)
    with pytest.raises(ValueError, match="bfloat16"):
        kernel.step_sizes(dt_low, weight.to(torch.bfloat16), bias, 4)
