"""The fused depthwise 3x3 convolution + bias + SiLU (GPU fast path), against torch's convolution: compiled on a
GPU, else run by Triton's CPU interpreter (conftest turns it on where there is no GPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernel(triton_ops):
    """ops.triton_dwconv, its kernels compiled for the GPU or run by Triton's interpreter on the CPU."""
    return triton_ops("triton_dwconv")


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 3, 40, 70), (1, 1, 1, 3)])  # ragged tiles; a 1x1 map
def test_matches_torch_conv_and_silu(kernel, shape):
    g = torch.Generator().manual_seed(sum(shape))
    b, h, w, c = shape
    x = torch.randn(b, h, w, c, generator=g)
    weight, bias = torch.randn(c, 1, 3, 3, generator=g), torch.randn(c, generator=g)
    expected = F.silu(F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=1, groups=c)).permute(0, 2, 3, 1)
    y = kernel.depthwise_conv3x3_silu(x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE)).cpu()
    assert y.shape == expected.shape and y.is_contiguous()
    assert (y - expected).abs().max().item() < 1e-5


def test_reads_strided_inputs_and_keeps_their_dtype(kernel):
    """A channel slice of a wider tensor (as a projection's half) and bf16 in -> bf16 out, float32 arithmetic."""
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(1, 4, 9, 10, generator=g).to(torch.bfloat16)
    x = wide[..., 2:7]
    weight, bias = torch.randn(5, 1, 3, 3, generator=g), torch.randn(5, generator=g)
    y = kernel.depthwise_conv3x3_silu(x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE)).cpu()
    expected = F.silu(F.conv2d(x.float().permute(0, 3, 1, 2), weight, bias, padding=1, groups=5)).permute(0, 2, 3, 1)
    assert y.dtype == torch.bfloat16
    assert (y.float() - expected).abs().max().item() < 2e-2 * expected.abs().max().item()


def test_rejects_a_convolution_that_is_not_depthwise_3x3(kernel):
    x = torch.randn(1, 4, 4, 6, device=DEVICE)
    with pytest.raises(ValueError, match="depthwise 3x3"):
        kernel.depthwise_conv3x3_silu(x, torch.randn(6, 1, 5, 5, device=DEVICE), torch.randn(6, device=DEVICE))
