"""The fused bilinear x2 up-sampling (+ LayerNorm) of the GPU fast path against torch: compiled on a GPU, else
run by Triton's CPU interpreter (conftest turns it on where there is no GPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernel(triton_ops):
    """ops.triton_upsample, its kernels compiled for the GPU or run by Triton's interpreter on the CPU."""
    return triton_ops("triton_upsample")


def _torch_upsample(x):
    return F.interpolate(x.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear", align_corners=False) \
        .permute(0, 2, 3, 1)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 1, 1, 4), (1, 4, 33, 12)])  # odd sizes, a 1x1 map, ragged
def test_matches_torch_bilinear(kernel, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    y = kernel.upsample2x(x.to(DEVICE)).cpu()
    expected = _torch_upsample(x)
    assert y.shape == expected.shape and y.is_contiguous()
    assert (y - expected).abs().max().item() < 1e-5


def test_fused_norm_strided_input_and_out_dtype(kernel):
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(1, 4, 6, 20, generator=g)
    x = wide[..., 3:13]  # a channel slice: strided
    weight, bias = torch.randn(10, generator=g), torch.randn(10, generator=g)
    expected = F.layer_norm(_torch_upsample(x), (10,), weight, bias, 1e-6)
    y = kernel.upsample2x(x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), 1e-6).cpu()
    assert (y - expected).abs().max().item() < 1e-4
    half = kernel.upsample2x(x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), 1e-6, torch.bfloat16).cpu()
    assert half.dtype == torch.bfloat16 and (half.float() - expected).abs().max().item() < 5e-2


def test_decoder_upsampling_with_fused_norms_matches(kernel):
    """The decoder's up-sampling modules give the same output on the fused path as on torch's."""
    from sigma_ros.model.sigma import FinalUpsampleX4, UpsampleExpand, fused_norms

    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 16, device=DEVICE)
    for module in (UpsampleExpand(16), FinalUpsampleX4(16)):
        module = module.to(DEVICE)
        with torch.no_grad():
            expected = module(x)
            with fused_norms():
                fused = module(x)
        assert fused.shape == expected.shape
        assert (fused - expected).abs().max().item() < 1e-4
