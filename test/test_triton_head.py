"""The decoder's last norm and 1x1 classifier as one Triton op for training (``ops.triton_head``): on a GPU where
there is one, else through Triton's CPU interpreter. Its logits and gradients against the torch ops it replaces,
and the model's use of it: the same logits and gradients, one full-resolution map kept instead of two."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

from sigma_ros.model.sigma import triton_training_scans  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def head(triton_ops):
    return triton_ops("triton_head")


@pytest.fixture(autouse=True)
def _exact_float32_convs():
    """cuDNN multiplies float32 in TF32 on GPUs by default (10-bit mantissas): the reference convs must not."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        yield


def _layers(channels, classes, seed):
    torch.manual_seed(seed)
    norm = torch.nn.LayerNorm(channels).to(DEVICE)
    with torch.no_grad():  # not the identity init, so the norm's parameters matter
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    conv = torch.nn.Conv2d(channels, classes, 1, bias=False).to(DEVICE)
    return norm, conv


def _reference(x, norm, conv):
    """The model's torch path under autocast: the norm in float32, rounded to x's dtype for the classifier, whose
    products sum in float32 (here exactly, in float64)."""
    y = F.layer_norm(x.float(), norm.normalized_shape, norm.weight, norm.bias, norm.eps).to(x.dtype)
    logits = torch.einsum("bhwc,kc->bkhw", y.double(), conv.weight.flatten(1).to(x.dtype).double())
    return logits.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels, classes, size", [(96, 9, (2, 5, 7)), (24, 3, (1, 9, 4)), (40, 17, (1, 3, 3))])
def test_norm_head_logits_match_norm_then_conv(head, dtype, channels, classes, size):
    norm, conv = _layers(channels, classes, 0)
    x = (1.5 * torch.randn(*size, channels, device=DEVICE) + 0.3).to(dtype)
    got = head.norm_head(x, norm, conv)
    want = _reference(x, norm, conv)
    assert got.shape == (size[0], classes, *size[1:]) and got.dtype == dtype
    # bf16: the kernel's norm and torch's may round a normalised value to neighbouring bf16 values (1/256 apart)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=3e-2)
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("channels, classes, size", [(96, 9, (2, 6, 11)), (40, 17, (1, 3, 5))])
def test_norm_head_gradients_match_autograd(head, channels, classes, size):
    """x, gamma, beta and the classifier's weight, for a logits gradient laid out as the loss gives it (NCHW)."""
    norm, conv = _layers(channels, classes, 1)
    x = (torch.randn(*size, channels, device=DEVICE) - 0.5).requires_grad_(True)
    g = torch.randn(size[0], classes, *size[1:], device=DEVICE)  # contiguous NCHW: strided for the op's (B,H,W,K)
    params = [x, norm.weight, norm.bias, conv.weight]
    want = torch.autograd.grad(conv(norm(x).permute(0, 3, 1, 2)), params, g)
    got = torch.autograd.grad(head.norm_head(x, norm, conv), params, g)
    for name, a, b in zip(("x", "gamma", "beta", "weight"), got, want, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_norm_head_bf16_gradients_follow_float32(head):
    norm, conv = _layers(96, 9, 2)
    x = torch.randn(2, 8, 8, 96, device=DEVICE)
    g = torch.randn(2, 9, 8, 8, device=DEVICE)
    params = [norm.weight, norm.bias, conv.weight]

    def grads(x):
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(head.norm_head(x, norm, conv), [x, *params], g.to(x.dtype))

    for name, a, b in zip(("x", "gamma", "beta", "weight"), grads(x.bfloat16()), grads(x), strict=True):
        assert ((a.float() - b).norm() / b.norm()).item() < 2e-2, name


def test_norm_head_op_schema_and_fakes(head):
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(1, 3, 4, 40, generator=g), 1 + 0.1 * torch.randn(40, generator=g),
            0.1 * torch.randn(40, generator=g), torch.randn(5, 40, generator=g)]
    torch.library.opcheck(head.norm_head_op, (*(t.to(DEVICE).requires_grad_(True) for t in args), 1e-5))


def test_norm_head_rejects_a_biased_or_wider_classifier(head):
    norm = torch.nn.LayerNorm(8)
    for conv in (torch.nn.Conv2d(8, 3, 1), torch.nn.Conv2d(8, 3, 3, padding=1, bias=False)):
        with pytest.raises(ValueError, match="bias-free 1x1"):
            head.norm_head(torch.randn(1, 2, 2, 8), norm, conv)


def test_model_trains_through_the_norm_head_keeping_one_full_resolution_map(head, monkeypatch):
    """With the Triton training kernels on, the decoder's last norm and classifier are the op: the same logits and
    gradients as the torch layers, and of the full-resolution maps the backward gets, only the op's input (the
    torch layers keep the norm's input and its output)."""
    from sigma_ros.model import SigmaConfig, build_sigma, sigma

    calls = []
    monkeypatch.setattr(head, "norm_head_op", lambda *a, _f=head.norm_head_op: calls.append(1) or _f(*a))
    monkeypatch.setattr(sigma, "_triton_scan_trains", lambda *a: False)  # the scans' own path: only the head differs
    torch.manual_seed(7)
    model = build_sigma(SigmaConfig.from_variant("micro", num_classes=5, drop_path_rate=0.0)).to(DEVICE).train()
    rgb, x = torch.randn(1, 3, 32, 48, device=DEVICE), torch.randn(1, 3, 32, 48, device=DEVICE)
    full_res = 32 * 48 * model.config.embed_dim

    def run(fused):
        model.zero_grad()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            with triton_training_scans(fused):
                logits = model(rgb, x)
        logits.square().mean().backward()
        maps = {t.untyped_storage().data_ptr() for t in saved
                if t.numel() == full_res and {32, 48} <= set(t.shape)}
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(maps)

    logits_ref, ref, maps_ref = run(False)
    assert not calls
    logits, got, maps = run(True)
    assert calls == [1] and maps_ref == 2 and maps == 1
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-4)
    for name in ref:
        assert ((got[name] - ref[name]).norm() / (ref[name].norm() + 1e-12)).item() < 1e-3, name
