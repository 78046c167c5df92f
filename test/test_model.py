"""The Sigma network: official parity, state-dict contract, sizes, checkpoints."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from sigma_ros.model import (
    CheckpointError, SigmaConfig, build_sigma, load_checkpoint, load_vmamba_imagenet, save_checkpoint,
)

GOLDEN = "reference/sigma_golden_a.npz"


def _manifest(shared_dir, variant):
    rows = []
    for line in (shared_dir / f"reference/manifest_sigma_{variant}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, _ = line.split("\t")
            rows.append((key, tuple(int(v) for v in re.findall(r"\d+", shape))))
    return rows


@pytest.fixture(scope="module")
def golden(shared_dir):
    z = np.load(shared_dir / GOLDEN)
    state = {k.removeprefix("state_dict/"): torch.from_numpy(np.asarray(z[k], np.float32))
             for k in z.files if k.startswith("state_dict/")}
    as_t = lambda k: torch.from_numpy(np.asarray(z[k], np.float32))  # noqa: E731
    return state, as_t("input/rgb"), as_t("input/x"), as_t("output/logits")


def test_golden_a_parity(golden):
    """Official weights + inputs -> the official logits, fp32 on the CPU."""
    state, rgb, x, expected = golden
    model = build_sigma(SigmaConfig(embed_dim=32, depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1), num_classes=9))
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        logits = model.eval()(rgb, x)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= 1e-4


def test_golden_a_parity_all_cpu_backends(golden, monkeypatch):
    state, rgb, x, expected = golden
    model = build_sigma(SigmaConfig(embed_dim=32, depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1), num_classes=9))
    model.load_state_dict(state, strict=True)
    for backend in ("cpu", "reference"):
        monkeypatch.setenv("SIGMA_SCAN_BACKEND", backend)
        with torch.no_grad():
            assert (model.eval()(rgb[:1], x[:1]) - expected[:1]).abs().max().item() <= 1e-4, backend


@pytest.mark.parametrize("variant,params", [("tiny", 48_287_360), ("small", 69_811_328), ("base", 121_414_820)])
def test_state_dict_matches_official_manifest(shared_dir, variant, params):
    with torch.device("meta"):
        model = build_sigma(SigmaConfig.from_variant(variant, num_classes=9))
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == _manifest(shared_dir, variant)  # keys, shapes and order
    assert sum(p.numel() for p in model.parameters()) == params


def test_variant_presets():
    assert SigmaConfig.tiny().variant == "tiny"
    assert SigmaConfig.base(num_classes=40).dims == (128, 256, 512, 1024)
    assert SigmaConfig(embed_dim=48).variant == "custom"
    with pytest.raises(ValueError, match="embed_dim"):
        SigmaConfig(embed_dim=16)
    with pytest.raises(ValueError, match="unknown variant"):
        SigmaConfig.from_variant("huge")


@pytest.mark.parametrize("h,w", [(70, 100), (32, 32), (64, 96), (45, 77)])
def test_odd_input_sizes_give_input_sized_logits(micro_cfg, h, w):
    torch.manual_seed(0)
    model = build_sigma(micro_cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w), torch.randn(1, 3, h, w))
    assert out.shape == (1, micro_cfg.num_classes, h, w)
    assert torch.isfinite(out).all()


def test_too_small_or_mismatched_inputs_are_rejected(micro_cfg):
    model = build_sigma(micro_cfg).eval()
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.zeros(1, 3, 16, 64), torch.zeros(1, 3, 16, 64))
    with pytest.raises(ValueError, match="same shape"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 32))


def test_siamese_batched_encoder_equals_two_passes(micro_cfg):
    """The encoder runs RGB and X as one batch: identical to the official two separate passes."""
    torch.manual_seed(1)
    model = build_sigma(micro_cfg).eval()
    rgb, x = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        joint = model.backbone.vssm(torch.cat([rgb, x]))
        separate = model.backbone.vssm(rgb)
    for j, s in zip(joint, separate):
        assert torch.allclose(j[:2], s, atol=1e-5)


def test_training_depthwise_convs_read_channels_last_contiguous_maps(micro_cfg):
    """Every depthwise conv of a training forward gets its map channels-last contiguous, as cuDNN takes it: a strided
    view (such as a chunk of one in-projection) is copied by the conv in the forward and again in its backward."""
    model = build_sigma(micro_cfg).train()
    seen = []

    def check(conv, args):
        seen.append(args[0].is_contiguous(memory_format=torch.channels_last) or args[0].is_contiguous())

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
            m.register_forward_pre_hook(check)
    model(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)).sum().backward()
    assert len(seen) >= 10 and all(seen), seen


def test_inference_copy_runs_the_head_as_an_aligned_gemm(micro_cfg):
    """The fast path's copy pads the 1x1 head to 16 output rows for an aligned GEMM: same logits, same shape."""
    from sigma_ros.model.fast import inference_copy

    torch.manual_seed(2)
    model = build_sigma(micro_cfg).eval()
    fast = inference_copy(model, torch.float32)
    classes, channels = model.decode_head.output.weight.shape[:2]
    assert fast.decode_head._head.shape == (16, channels) and model.decode_head._head is None
    rgb, x = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, logits = model(rgb, x), fast(rgb, x)
    assert logits.shape == expected.shape == (1, classes, 64, 96)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_fusion_blocks_run_where_their_stage_is_ready(micro_cfg):
    """The encoder hands each stage's map over as soon as that stage is done (the fast path starts the stage's
    fusion then, on a side stream): the same maps, in order, as the whole forward's."""
    torch.manual_seed(2)
    backbone = build_sigma(micro_cfg).eval().backbone.vssm
    both = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        stages = backbone.stages(both)
        first = next(stages)  # the first stage's map exists before the second stage has run
        assert first.shape[1:3] == (16, 24)
        maps = [first, *stages]
        expected = backbone(both)
    assert len(maps) == len(expected) == 4 and all(torch.equal(m, e) for m, e in zip(maps, expected))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="side streams need a GPU")
def test_fusion_on_side_streams_gives_the_logits_of_one_stream(micro_cfg):
    """Each stage's fusion on its own stream, the encoder going on meanwhile, eagerly and replayed as a CUDA graph:
    the logits of one stream, for successive frames (memory one stream frees is not reused while another still
    reads it: a race would hand a block another frame's data). Eagerly not bitwise: the pooling kernel's mean adds
    partial sums with atomics, whose order varies from run to run on one stream too (about 1e-6 here, measured on
    an H200; cuDNN's TF32 convolutions, off here, make that 1e-3). The graphs replayed bitwise alike there."""
    from sigma_ros.model.fast import build_fast_forward
    from sigma_ros.model.sigma import concurrent_fusion, fused_norms, fused_scans

    torch.manual_seed(2)
    model = build_sigma(micro_cfg).cuda().eval()
    frames = [(torch.randn(1, 3, 96, 128, device="cuda"), torch.randn(1, 3, 96, 128, device="cuda"))
              for _ in range(3)]
    with torch.no_grad(), fused_scans(), fused_norms(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        one_stream = [model(rgb, x) for rgb, x in frames]
        with concurrent_fusion():
            side_streams = [model(rgb, x) for rgb, x in frames]
    for a, b in zip(one_stream, side_streams):
        assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().item()
    plain, concurrent = (build_fast_forward(model, torch.bfloat16, concurrent=c) for c in (False, True))
    for rgb, x in frames + frames[:1]:
        a, b = plain(rgb, x), concurrent(rgb, x)
        assert (a - b).abs().max().item() <= 1e-2 * a.abs().max().item()  # bf16: a flipped rounding, at most


@pytest.mark.skipif(not torch.cuda.is_available(), reason="side streams need a GPU")
def test_each_thread_has_its_own_side_streams():
    """A graph captured in one thread must not take in work another thread puts on a shared side stream."""
    import threading

    from sigma_ros.model.sigma import _side_stream

    device = torch.device("cuda")
    here = _side_stream(device, 0)
    other = []
    worker = threading.Thread(target=lambda: other.append(_side_stream(device, 0)))
    worker.start()
    worker.join()
    assert _side_stream(device, 0) is here and other[0] is not here and _side_stream(device, 1) is not here


def test_checkpoint_round_trip(tmp_path, micro_cfg):
    torch.manual_seed(2)
    model = build_sigma(micro_cfg).eval()
    names = ["road", "car", "person", "cone", "sky"]
    path = save_checkpoint(tmp_path / "m.pt", model, micro_cfg, class_names=names,
                           palette=np.arange(15).reshape(5, 3), preprocessing="rgb", extra={"step": 7})
    ck = load_checkpoint(path)
    assert ck.config == micro_cfg and ck.class_names == names and ck.preprocessing == "rgb"
    assert ck.extra == {"step": 7} and ck.palette.dtype == np.uint8 and ck.palette.shape == (5, 3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x, x), ck.model(x, x))
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left nothing behind


def test_official_checkpoint_formats_load_and_infer_config(tmp_path, micro_cfg):
    model = build_sigma(micro_cfg)
    sd = model.state_dict()
    for i, payload in enumerate([{"model": sd, "epoch": 3}, sd, {"state_dict": {"module." + k: v for k, v in sd.items()}}]):
        torch.save(payload, tmp_path / f"o{i}.pth")
        ck = load_checkpoint(tmp_path / f"o{i}.pth")
        assert ck.official and ck.config == micro_cfg and ck.class_names is None


def test_checkpoint_errors_name_the_file_and_problem(tmp_path, micro_cfg):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "lfs.pth").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    with pytest.raises(CheckpointError, match="LFS pointer"):
        load_checkpoint(tmp_path / "lfs.pth")
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a Sigma checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
    # wrong variant: the micro weights are not Sigma-Tiny; the message lists what differs
    torch.save({"model": build_sigma(micro_cfg).state_dict()}, tmp_path / "micro.pth")
    with pytest.raises(CheckpointError, match=r"does not match Sigma-tiny:(.|\n)*missing keys(.|\n)*shape mismatches"):
        load_checkpoint(tmp_path / "micro.pth", variant="tiny")
    with pytest.raises(CheckpointError, match="predicts 5 classes but the class configuration has 9"):
        load_checkpoint(tmp_path / "micro.pth", num_classes=9)
    # a tampered state dict (one tensor of the wrong shape)
    sd = build_sigma(micro_cfg).state_dict()
    sd["decode_head.up.linear1.weight"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "bad_shape.pth")
    with pytest.raises(CheckpointError, match=r"decode_head\.up\.linear1\.weight: checkpoint \(3, 3\)"):
        load_checkpoint(tmp_path / "bad_shape.pth")


def test_checkpoints_never_unpickle_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_vmamba_imagenet_init_remaps_keys(tmp_path, micro_cfg):
    """A VMamba v0 checkpoint (old key names, classifier head) initialises the shared encoder."""
    donor = build_sigma(micro_cfg).backbone.vssm.state_dict()
    renamed = {}
    for k, v in donor.items():
        if k.startswith("outnorm"):
            continue  # VMamba classification checkpoints have no per-stage output norms
        k = k.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
        k = k.replace(".norm.weight", ".ln_1.weight").replace(".norm.bias", ".ln_1.bias") if ".blocks." in k else k
        k = k.replace(".op.", ".self_attention.")
        renamed[k] = v + 1.0
    renamed["head.weight"] = torch.zeros(1000, 256)
    torch.save({"model": renamed}, tmp_path / "vssm.pth")
    model = build_sigma(micro_cfg)
    report = load_vmamba_imagenet(model, tmp_path / "vssm.pth")
    assert report.loaded == len(renamed) - 1
    assert sorted(report.missing) == sorted(k for k in donor if k.startswith("outnorm"))
    assert report.skipped == ["head.weight"]
    got = model.backbone.vssm.state_dict()
    assert torch.equal(got["patch_embed.0.weight"], donor["patch_embed.0.weight"] + 1.0)
    assert torch.equal(got["layers.0.blocks.0.norm.weight"], donor["layers.0.blocks.0.norm.weight"] + 1.0)
    with pytest.raises(CheckpointError, match="do not fit this encoder"):
        load_vmamba_imagenet(build_sigma(SigmaConfig.micro(num_classes=5, d_state=8)), tmp_path / "vssm.pth")


def test_scan_custom_op_for_torch_compile_matches_the_kernel():
    """The fast path's compiled graph keeps the scan as a custom op: its fake (meta) result must match the real one
    in shape, dtype and strides, and routing the model through it must not change the logits."""
    from sigma_ros.model.fast import _scan_as_op, _scan_fwd
    from sigma_ros.model.sigma import scan_implementation

    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 8, 40, generator=g).transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous, like CroMB
    args = (u, torch.randn(2, 8, 40, generator=g), -torch.rand(8, 4, generator=g), torch.randn(2, 2, 4, 40, generator=g),
            torch.randn(2, 2, 4, 40, generator=g), torch.randn(8, generator=g), torch.randn(8, generator=g), True)
    torch.library.opcheck(_scan_fwd, args, test_utils=("test_schema", "test_faketensor"))
    model = build_sigma(SigmaConfig.micro(num_classes=3)).eval()
    rgb, x = torch.randn(1, 3, 64, 64, generator=g), torch.randn(1, 3, 64, 64, generator=g)
    with torch.no_grad(), scan_implementation(_scan_as_op):
        routed = model(rgb, x)
    with torch.no_grad():
        assert torch.equal(routed, model(rgb, x))


def test_compiled_training_upsamples_by_sums_without_a_scatter():
    """Under torch.compile with gradients the decoder's bilinear x2 is sums of shifted copies: the joint graph has no
    interpolation (whose backward Inductor lowers to an atomic scatter-add), and values and gradients are eager
    F.interpolate's, odd sizes included."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    from sigma_ros.model.sigma import UpsampleExpand, _upsample2x_by_sums

    graphs = []
    backend = aot_autograd(fw_compiler=lambda gm, _: graphs.append(gm) or make_boxed_func(gm.forward),
                           bw_compiler=lambda gm, _: graphs.append(gm) or make_boxed_func(gm.forward))
    torch.manual_seed(0)
    up = UpsampleExpand(8)
    for shape in ((2, 5, 7, 8), (1, 1, 3, 8)):
        x = torch.randn(shape, dtype=torch.float64)
        up.double().zero_grad()
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        want = up(xe)
        want.square().sum().backward()
        eager_grads = [xe.grad] + [p.grad.clone() for p in up.parameters()]
        up.zero_grad()
        torch._dynamo.reset()
        got = torch.compile(up, backend=backend, fullgraph=True)(xc)
        got.square().sum().backward()
        assert got.shape == (shape[0], 2 * shape[1], 2 * shape[2], 4)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for g, e in zip([xc.grad] + [p.grad for p in up.parameters()], eager_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    ops = {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert len(graphs) == 4 and "aten.cat.default" in ops
    assert not [op for op in ops if "upsample" in op or "index_put" in op or "scatter" in op], ops
    half = torch.randn(2, 5, 7, 8).bfloat16()  # bf16 (autocast): float32 math rounded once, as the interpolation
    assert torch.equal(_upsample2x_by_sums(half), torch.nn.functional.interpolate(
        half.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear", align_corners=False).permute(0, 2, 3, 1))


@pytest.mark.parametrize("variant,paper_gflops", [("tiny", 89.5), ("small", 139.0), ("base", 241.0)])
def test_flop_count_matches_the_papers_figures(variant, paper_gflops):
    """``sigma-ros info``'s count runs the model on the meta device (no memory, no kernels): it must get through
    every block (the decoder's up-sampling once turned autocast off for the meta device and failed) and reproduce
    the paper's GFLOPs at 480x640."""
    from sigma_ros.tools.info import count_flops

    counted = count_flops(SigmaConfig.from_variant(variant, num_classes=9), 480, 640)
    assert counted["authors_gflops"] == pytest.approx(paper_gflops, rel=0.015)


def test_cpu_inference_scans_reversed_directions_in_place_with_the_same_logits(micro_cfg, monkeypatch):
    """On the numba backend, inference scans go through ``scan_directions_cpu`` (no flipped copies); the logits are
    bitwise those of the generic path, which materialises the reversed directions."""
    import importlib

    from sigma_ros.model.sigma import scan_implementation
    from sigma_ros.ops import available_backends

    ops_scan = importlib.import_module("sigma_ros.ops.selective_scan")  # the package re-exports the function

    if "cpu" not in available_backends():
        pytest.skip("numba backend unavailable")
    monkeypatch.delenv(ops_scan.ENV_VAR, raising=False)
    from sigma_ros.model import sigma as sigma_module

    calls = []
    real = ops_scan.scan_directions_cpu
    monkeypatch.setattr(sigma_module, "scan_directions_cpu", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = build_sigma(micro_cfg).eval()
    g = torch.Generator().manual_seed(3)
    rgb, x = torch.randn(1, 3, 64, 96, generator=g), torch.randn(1, 3, 64, 96, generator=g)
    with torch.no_grad():
        in_place = model(rgb, x)
        assert calls, "the CPU inference path did not take scan_directions_cpu"
        with scan_implementation(lambda *a, **k: ops_scan.selective_scan(*a, **k)):
            materialised = model(rgb, x)
    assert torch.equal(in_place, materialised)
