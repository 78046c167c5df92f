"""The fused LayerNorm kernel of the GPU fast path (``ops.triton_norm``), against torch's LayerNorm; on the GPU
where there is one, else through Triton's CPU interpreter (conftest turns it on where there is no GPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from sigma_ros.model.sigma import LayerNorm, fused_norms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def triton_norm(triton_ops):
    """ops.triton_norm, its kernels compiled for the GPU or run by Triton's interpreter on the CPU."""
    return triton_ops("triton_norm")


def _params(g, channels):
    return (1 + 0.2 * torch.randn(channels, generator=g)).to(DEVICE), (0.1 * torch.randn(channels, generator=g)).to(DEVICE)


@pytest.mark.parametrize("shape", [(2, 3, 5, 24), (7, 96), (1, 2, 9, 1536)])
def test_layer_norm_matches_torch(triton_norm, shape):
    """Channel counts that are not a power of two are masked, ragged row blocks too; any rank is viewed as maps."""
    g = torch.Generator().manual_seed(sum(shape))
    x = (3 * torch.randn(*shape, generator=g) + 1).to(DEVICE)
    weight, bias = _params(g, shape[-1])
    y = triton_norm.layer_norm(x, weight, bias, 1e-5)
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    assert (y - F.layer_norm(x, shape[-1:], weight, bias, 1e-5)).abs().max().item() < 1e-5


def test_layer_norm_adds_a_strided_twin_and_gates(triton_norm):
    """SS2D's merge: the column-order output is a transposed view; the gate is a strided half of a projection."""
    g = torch.Generator().manual_seed(0)
    b, h, w, c = 2, 3, 5, 16
    rows = torch.randn(b, h, w, c, generator=g).to(DEVICE)
    cols = torch.randn(b, w, h, c, generator=g).to(DEVICE).transpose(1, 2)
    z = torch.randn(b, h, w, 2 * c, generator=g).to(DEVICE)[..., c:]
    weight, bias = _params(g, c)
    expected = F.layer_norm(rows + cols, (c,), weight, bias, 1e-5) * F.silu(z)
    y = triton_norm.layer_norm(rows, weight, bias, 1e-5, other=cols, gate=z)
    assert (y - expected).abs().max().item() < 1e-5
    half = triton_norm.layer_norm(rows, weight, bias, 1e-5, other=cols, gate=z, out_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and (half.float() - expected).abs().max().item() < 3e-2


def test_layer_norm_adds_each_inputs_reversed_twin_first(triton_norm):
    """SS2D's four scan outputs kept apart (``twins_apart``): LN((rows + rows_twin) + (cols + cols_twin)), summed in
    that order, so the result is bitwise the norm of the two summed orders; ConMB's: x + x_twin alone, scaled. A
    twin must have its partner's strides, and other's twin comes exactly with other."""
    g = torch.Generator().manual_seed(4)
    b, h, w, c = 2, 3, 5, 16
    ys = torch.randn(b, 4, h, w, c, generator=g).to(DEVICE)
    z = torch.randn(b, h, w, c, generator=g).to(DEVICE)
    weight, bias = _params(g, c)
    rows, cols = ys[:, 0] + ys[:, 2], ys[:, 1] + ys[:, 3]
    y = triton_norm.layer_norm(ys[:, 0], weight, bias, 1e-5, other=ys[:, 1], gate=z, x_twin=ys[:, 2],
                               other_twin=ys[:, 3])
    assert torch.equal(y, triton_norm.layer_norm(rows, weight, bias, 1e-5, other=cols, gate=z))
    assert (y - F.layer_norm(rows + cols, (c,), weight, bias, 1e-5) * F.silu(z)).abs().max().item() < 1e-5
    scale = torch.rand(b, c, generator=g).to(DEVICE)
    alone = triton_norm.layer_norm(ys[:, 0], weight, bias, 1e-5, scale=scale, x_twin=ys[:, 2])
    assert torch.equal(alone, triton_norm.layer_norm(rows, weight, bias, 1e-5, scale=scale))
    module = LayerNorm(c).to(DEVICE)
    with torch.no_grad():
        module.weight.copy_(weight), module.bias.copy_(bias)
        plain = module(ys[:, 0], other=ys[:, 1], gate=z, x_twin=ys[:, 2], other_twin=ys[:, 3])  # torch's ops
        with fused_norms():
            assert (module(ys[:, 0], other=ys[:, 1], gate=z, x_twin=ys[:, 2], other_twin=ys[:, 3]) - plain
                    ).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="partner's strides"):
        triton_norm.layer_norm(ys[:, 0], weight, bias, 1e-5, x_twin=ys[:, 2].contiguous().transpose(1, 2)
                               .contiguous().transpose(1, 2))
    with pytest.raises(ValueError, match="exactly when other"):
        triton_norm.layer_norm(ys[:, 0], weight, bias, 1e-5, other=ys[:, 1], x_twin=ys[:, 2])


def test_layer_norm_scales_channels_per_map_and_writes_into_a_slice(triton_norm):
    """ConMB's gated norms: each map's channels times its (batch, C) gate, written into one half of a wider
    tensor in the next matmul's dtype, the other half untouched. The rounding happens once, after the product."""
    g = torch.Generator().manual_seed(2)
    b, h, w, c = 2, 3, 5, 12
    x = torch.randn(b, h, w, c, generator=g).to(DEVICE)
    scale = torch.rand(b, c, generator=g).to(DEVICE)
    weight, bias = _params(g, c)
    expected = F.layer_norm(x, (c,), weight, bias, 1e-5) * scale[:, None, None, :]
    unfused = triton_norm.layer_norm(x, weight, bias, 1e-5) * scale[:, None, None, :]  # the product, then a cast
    assert (unfused - expected).abs().max().item() < 1e-5
    for dtype in (torch.float32, torch.bfloat16):
        out = torch.full((b, h, w, 2 * c), 7.0, dtype=dtype, device=DEVICE)
        y = triton_norm.layer_norm(x, weight, bias, 1e-5, scale=scale, out=out[..., c:])
        assert y.data_ptr() == out[..., c:].data_ptr()
        assert (out[..., :c] == 7.0).all()
        if dtype == torch.float32 or DEVICE == "cuda":
            assert torch.equal(out[..., c:], unfused.to(dtype))
        else:  # Triton's CPU interpreter truncates to bf16 where the GPU rounds to nearest: one bf16 step apart
            assert ((out[..., c:].float() - unfused).abs() <= unfused.abs() * 2**-7).all()
    with pytest.raises(ValueError, match="scale must be"):
        triton_norm.layer_norm(x, weight, bias, 1e-5, scale=scale[:, :-1])


def test_layer_norm_module_uses_the_kernel_only_on_the_fast_path(triton_norm, monkeypatch):
    """Same parameters as nn.LayerNorm (checkpoint keys unchanged); the kernel runs only under ``fused_norms`` and
    without gradients, and gives what the plain module gives."""
    norm = LayerNorm(12).to(DEVICE)
    assert list(norm.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 4, 3, 12, device=DEVICE)
    calls = []
    original = triton_norm.layer_norm
    monkeypatch.setattr(triton_norm, "layer_norm", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        plain = norm(x)
        with fused_norms():
            fused = norm(x)
    assert calls == [1] and (fused - plain).abs().max().item() < 1e-5
    with fused_norms():
        assert norm(x).requires_grad and calls == [1]  # training: the plain LayerNorm


def test_layer_norm_module_writes_the_dtype_its_consumer_needs(triton_norm):
    """Under autocast a norm that feeds a matmul writes the autocast dtype (the matmul would cast to it anyway); a
    norm that starts a residual stream keeps float32, as autocast's LayerNorm does."""
    x = torch.randn(2, 4, 3, 12, device=DEVICE)
    with torch.no_grad(), fused_norms(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        assert LayerNorm(12, feeds_matmul=True).to(DEVICE)(x).dtype == torch.bfloat16
        assert LayerNorm(12).to(DEVICE)(x).dtype == torch.float32
