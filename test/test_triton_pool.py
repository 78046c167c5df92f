"""The one-pass mean and max pooling of the GPU fast path against torch: compiled on a GPU, else run by Triton's
CPU interpreter (conftest turns it on where there is no GPU)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernel(triton_ops):
    """ops.triton_pool, its kernels compiled for the GPU or run by Triton's interpreter on the CPU."""
    return triton_ops("triton_pool")


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 1, 1, 3), (1, 30, 40, 70)])  # ragged; one pixel; many chunks
def test_mean_and_max_match_torch(kernel, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))) - 3  # all-negative maxima too
    strided = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # channels-last storage of an NCHW map
    out = kernel.mean_and_max(strided.to(DEVICE)).cpu()
    assert out.shape == (shape[0], 2, shape[3]) and out.dtype == torch.float32
    assert (out[:, 0] - x.mean(dim=(1, 2))).abs().max().item() < 1e-5
    assert torch.equal(out[:, 1], x.amax(dim=(1, 2)))


def test_channel_attention_and_concat_fusion_match_on_the_fused_path(kernel):
    """Also the decoder block, whose channel-attention gate the fused path applies with its residual sum."""
    from sigma_ros.model.sigma import (ChannelAttention, ConcatMambaFusion, CVSSDecoderBlock, fused_norms,
                                       fused_scans)

    torch.manual_seed(0)
    attention = ChannelAttention(60).to(DEVICE)
    x = torch.randn(1, 60, 5, 7, device=DEVICE)
    fusion = ConcatMambaFusion(16, d_state=4, ssm_ratio=1.0).to(DEVICE)
    rgb, other = torch.randn(1, 4, 5, 16, device=DEVICE), torch.randn(1, 4, 5, 16, device=DEVICE)
    block = CVSSDecoderBlock(60, d_state=4, ssm_ratio=1.0, drop_path=0.0).to(DEVICE).eval()
    with torch.no_grad():
        block.scale1.uniform_(0.5, 1.5)
        block.scale2.uniform_(0.5, 1.5)
    x_block = torch.randn(1, 5, 7, 60, device=DEVICE)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # exact float32 convs on GPUs
        expected = attention(x), fusion(rgb, other), block(x_block)
        with fused_norms(), fused_scans():
            fused = attention(x), fusion(rgb, other), block(x_block)
    for f, e in zip(fused, expected):
        assert (f - e).abs().max().item() < 1e-5
