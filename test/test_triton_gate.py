"""The channel gate's MLP in one Triton kernel (GPU fast path), against torch's layers: compiled on a GPU, else run
by Triton's CPU interpreter (conftest turns it on where there is no GPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernel(triton_ops):
    """ops.triton_gate, its kernels compiled for the GPU or run by Triton's interpreter on the CPU."""
    return triton_ops("triton_gate")


def _reference(pooled, w1, w2):
    """sigmoid of the MLP summed over the pooled vectors, as the model's torch layers compute it."""
    return torch.sigmoid(sum(F.linear(F.silu(F.linear(pooled[:, j], w1)), w2) for j in range(pooled.shape[1])))


@pytest.mark.parametrize("batch,terms,channels,hidden", [
    (2, 2, 60, 2),     # the decoder's channel attention: mean and max, C // 30 hidden
    (1, 1, 1536, 96),  # Sigma-T's widest squeeze-excite gate: the hidden layer sums over 12 channel blocks
    (3, 2, 37, 1),     # ragged channels, one hidden unit
])
def test_gate_equals_the_torch_mlp(kernel, batch, terms, channels, hidden):
    g = torch.Generator().manual_seed(channels)
    pooled = torch.randn(batch, terms, channels, generator=g)
    w1, w2 = torch.randn(hidden, channels, generator=g) / channels**0.5, torch.randn(channels, hidden, generator=g)
    gate = kernel.channel_gate(pooled.to(DEVICE), w1.to(DEVICE), w2.to(DEVICE)).cpu()
    assert gate.shape == (batch, channels) and gate.dtype == torch.float32
    assert (gate - _reference(pooled, w1, w2)).abs().max().item() < 1e-5


def test_gate_takes_conv_weights_and_16_bit_weights(kernel):
    """1x1 convolution weights (C_out, C_in, 1, 1) as the channel attention stores them; bf16 weights (the fast path's
    inference copy) multiplied in float32; the result in the dtype asked for."""
    g = torch.Generator().manual_seed(1)
    pooled = torch.randn(2, 2, 90, generator=g)
    w1, w2 = torch.randn(3, 90, 1, 1, generator=g) / 10, torch.randn(90, 3, 1, 1, generator=g)
    w1, w2 = w1.to(torch.bfloat16), w2.to(torch.bfloat16)
    gate = kernel.channel_gate(pooled.to(DEVICE), w1.to(DEVICE), w2.to(DEVICE), torch.bfloat16).cpu()
    assert gate.dtype == torch.bfloat16
    expected = _reference(pooled, w1.flatten(1).float(), w2.flatten(1).float())
    assert (gate.float() - expected).abs().max().item() <= 2.0**-8  # one bf16 rounding of a value in (0, 1)


def test_gate_rejects_weights_of_another_shape(kernel):
    pooled = torch.randn(1, 2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="do not make a 8 -> hidden -> 8 MLP"):
        kernel.channel_gate(pooled, torch.randn(2, 9, device=DEVICE), torch.randn(8, 2, device=DEVICE))


def test_gated_residual_equals_the_product_then_addcmul(kernel):
    """The decoder's conv branch: y (a permuted channels-first map, as the convolution leaves it) times its bf16
    gate, rounded to bf16 as the separate multiply did, plus the float32 residual x times the block's scale, in the
    dtype addcmul gives (float32)."""
    g = torch.Generator().manual_seed(3)
    b, h, w, c = 2, 3, 5, 150  # ragged channel blocks
    y = torch.randn(b, c, h, w, generator=g).to(torch.bfloat16).to(DEVICE)  # (B, C, H, W) storage
    gate = torch.rand(b, c, generator=g).to(torch.bfloat16).to(DEVICE)
    x, scale = torch.randn(b, h, w, c, generator=g).to(DEVICE), torch.randn(c, generator=g).to(DEVICE)
    out = kernel.gated_residual(y.permute(0, 2, 3, 1), gate, x, scale)
    product = (y * gate[:, :, None, None]).permute(0, 2, 3, 1)  # bf16, as ChannelAttention returned it
    expected = torch.addcmul(product, x, scale)
    assert out.shape == expected.shape and out.dtype == expected.dtype == torch.float32 and out.is_contiguous()
    # The GPU rounds the product to bf16 as torch does; Triton's CPU interpreter truncates: one bf16 step apart.
    tolerance = 1e-6 if DEVICE == "cuda" else 2.0**-7
    assert ((out - expected).abs() <= tolerance * (1 + product.float().abs())).all()
    with pytest.raises(ValueError, match="shapes"):
        kernel.gated_residual(y.permute(0, 2, 3, 1), gate[:, :-1], x, scale)
