"""Preprocessing profiles on known pixels, palettes and overlays, class configs, the Segmenter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from sigma_ros.classes import DATASETS, load_class_config
from sigma_ros.postprocess import colorize, overlay, voc_palette
from sigma_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_pair, rgb_to_grey, x_to_uint8
from sigma_ros.segmenter import Segmenter, resolve_device

MEAN, STD = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)


def _norm(v, channel):
    return (v / 255.0 - MEAN[channel]) / STD[channel]


def test_official_profile_feeds_bgr_and_imagenet_stats_by_channel_index():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # pure-ish red
    rgb[..., 2] = 10
    x = np.full((4, 6), 77, np.uint8)
    r_t, x_t = preprocess_pair(rgb, x, profile="official")
    # channel 0 of the network input is B (10), normalised with the *R* statistics (index 0)
    assert r_t[0, 0, 0].item() == pytest.approx(_norm(10, 0), abs=1e-6)
    assert r_t[1, 0, 0].item() == pytest.approx(_norm(0, 1), abs=1e-6)
    assert r_t[2, 0, 0].item() == pytest.approx(_norm(200, 2), abs=1e-6)
    # the grey X is replicated x3 and each copy gets its own channel statistics
    assert [x_t[c, 1, 1].item() for c in range(3)] == pytest.approx([_norm(77, c) for c in range(3)], abs=1e-6)


def test_rgb_profile_keeps_rgb_order():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200
    r_t, _ = preprocess_pair(rgb, np.zeros((4, 6), np.uint8), profile="rgb")
    assert r_t[0, 0, 0].item() == pytest.approx(_norm(200, 0), abs=1e-6)
    assert r_t[2, 0, 0].item() == pytest.approx(_norm(0, 2), abs=1e-6)


def test_x_conversions_on_known_values():
    # 16-bit -> 8-bit as OpenCV's grey read does: v >> 8 (truncation)
    assert x_to_uint8(np.array([[0, 255, 256, 65535, 40000]], np.uint16), "official").tolist() == [[0, 0, 1, 255, 156]]
    # depth in metres: linear from depth_range, invalid (NaN, inf, <= 0) -> 0, clipped above
    d = np.array([[np.nan, np.inf, 0.0, 5.0, 10.0, 20.0]], np.float32)
    assert x_to_uint8(d, "rgb", "depth", (0.0, 10.0)).tolist() == [[0, 0, 0, 128, 255, 255]]
    # 16-bit depth (mm) under the rgb profile goes through metres
    assert x_to_uint8(np.array([[5000]], np.uint16), "rgb", "depth", (0.0, 10.0)).tolist() == [[128]]
    # colour X -> OpenCV's BT.601 grey
    assert rgb_to_grey(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)).tolist() == \
        [[76, 150, 29, 255]]
    with pytest.raises(ValueError, match="depth_range"):
        x_to_uint8(d, "rgb", "depth", (5.0, 5.0))


def test_x_of_another_size_is_resized_and_size_option_applies():
    rgb = np.zeros((60, 80, 3), np.uint8)
    r_t, x_t = preprocess_pair(rgb, np.zeros((30, 40), np.uint16))
    assert r_t.shape == x_t.shape == (3, 60, 80)
    r_t, x_t = preprocess_pair(rgb, np.zeros((30, 40), np.uint8), size=(64, 48))
    assert r_t.shape == x_t.shape == (3, 48, 64)
    with pytest.raises(ValueError, match="unknown preprocessing profile"):
        preprocess_pair(rgb, rgb[..., 0], profile="bgr")


def test_palette_colorize_overlay():
    pal = voc_palette(41)
    assert pal[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    labels = np.array([[0, 1], [2, 255]])
    color = colorize(labels, pal[:3])
    assert color.tolist() == [[[0, 0, 0], [128, 0, 0]], [[0, 128, 0], [0, 0, 0]]]  # 255 (ignore) drawn black
    rgb = np.full((2, 2, 3), 100, np.uint8)
    assert np.array_equal(overlay(rgb, labels, pal, alpha=0.0), rgb)
    assert np.array_equal(overlay(rgb, labels, pal[:3], alpha=1.0), color)
    half = overlay(rgb, labels, pal, alpha=0.5)
    assert half[0, 1].tolist() == [114, 50, 50]
    assert np.array_equal(overlay(rgb, labels, pal[:3], 0.5, color=color), overlay(rgb, labels, pal[:3], 0.5))


def test_class_configs_builtin_and_yaml(tmp_path):
    assert [DATASETS[k].num_classes for k in ("mfnet", "pst900", "nyu", "sunrgbd")] == [9, 5, 40, 37]
    ros = {"/**": {"ros__parameters": {"class_names": ["a", "b"], "palette": [1, 2, 3, 4, 5, 6],
                                       "modality": "depth", "preprocessing": "rgb"}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(ros))
    cc = load_class_config(tmp_path / "c.yaml")
    assert cc.class_names == ["a", "b"] and cc.palette.tolist() == [[1, 2, 3], [4, 5, 6]] and cc.modality == "depth"
    (tmp_path / "bad.yaml").write_text("class_names: [a, b]\npalette: [1, 2, 3]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*palette"):
        load_class_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="neither a built-in dataset"):
        load_class_config("no-such-dataset")


def test_segmenter_end_to_end_and_devices(micro_checkpoint):
    seg = Segmenter.from_checkpoint(micro_checkpoint, device="cpu")
    rgb = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    out = seg(rgb, rgb[..., 0], confidence=True)
    assert out.labels.shape == (50, 70) and out.labels.max() < seg.num_classes
    assert out.confidence.shape == (50, 70) and 0 < out.confidence.min() <= out.confidence.max() <= 1
    small = Segmenter.from_checkpoint(micro_checkpoint, device="cpu", input_size=(64, 48))
    assert small(rgb, rgb[..., 0]).labels.shape == (50, 70)  # back at the camera's geometry
    with torch.no_grad():  # the labels are the argmax of the model's logits on the preprocessed pair
        r_t, x_t = seg.preprocess(rgb, rgb[..., 0])
        expected = seg.model(r_t[None], x_t[None])[0].argmax(0).numpy()
    assert np.array_equal(seg(rgb, rgb[..., 0]).labels, expected)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="precision"):
        Segmenter.from_checkpoint(micro_checkpoint, device="cpu", precision="int8")
    assert Segmenter.from_checkpoint(micro_checkpoint, device="cpu", precision="auto").precision == "fp32"  # bf16 on GPUs


def test_labels_from_scores_equals_torch_argmax_and_softmax():
    from sigma_ros.postprocess import labels_from_scores

    scores = np.random.default_rng(1).standard_normal((7, 33, 45)).astype(np.float32)
    labels, conf = labels_from_scores(scores, confidence=True)
    ref_conf, ref_labels = torch.softmax(torch.from_numpy(scores), dim=0).max(dim=0)
    assert np.array_equal(labels, ref_labels.numpy()) and labels.dtype == np.int64
    assert np.allclose(conf, ref_conf.numpy(), atol=1e-6)
    assert labels_from_scores(scores)[1] is None


# ------------------------------------------------------------------ torch (device) paths: the same bytes as numpy
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def _reference_x(x, profile, modality, depth_range):
    """The X rules in numpy (the implementation before the torch port), as the oracle."""
    if x.ndim == 3:
        r, g, b = (x[..., i].astype(np.uint32) for i in range(3))
        return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14).astype(np.uint8)
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.uint16:
        if profile == "official" or modality == "thermal":
            return (x >> 8).astype(np.uint8)
        v = x.astype(np.float32) / 1000.0
    else:
        v = x.astype(np.float32)
    lo, hi = depth_range
    valid = np.isfinite(v) & (v > 0)
    scaled = np.clip((np.where(valid, v, lo) - lo) * (255.0 / (hi - lo)), 0, 255)
    return np.where(valid, np.rint(scaled), 0).astype(np.uint8)


def _reference_inputs(rgb, x, profile, modality, depth_range, size):
    """The CPU preprocessing before the device port: /255, BGR flip, resize, then normalise (float32 ops)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    r = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255)
    g = torch.from_numpy(_reference_x(x, profile, modality, depth_range).copy())[None].float().div_(255)
    if profile == "official":
        r = r.flip(0)
    target = rgb.shape[:2] if size is None else (size[1], size[0])

    def resize(t):
        if tuple(t.shape[-2:]) == tuple(target):
            return t
        return torch.nn.functional.interpolate(t[None], size=target, mode="bilinear", align_corners=False)[0]

    return (resize(r) - mean) / std, (resize(g).expand(3, -1, -1) - mean) / std


def _x_images(rng, h, w):
    depth = (rng.standard_normal((h, w)) * 6 + 4).astype(np.float32)
    depth.flat[:6] = [np.nan, np.inf, -np.inf, 0.0, -1.0, 5.0]
    return {"mono8": rng.integers(0, 256, (h, w), dtype=np.uint8),
            "mono16": rng.integers(0, 65536, (h, w), dtype=np.uint16),
            "mono16_small": rng.integers(0, 65536, (h // 2, w // 3), dtype=np.uint16),
            "depth32": depth, "depth64": depth.astype(np.float64) + 1e-9,
            "rgb8": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "rgba8": rng.integers(0, 256, (h, w, 4), dtype=np.uint8)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("profile", ["official", "rgb"])
@pytest.mark.parametrize("modality", ["thermal", "depth"])
def test_preprocess_on_any_device_matches_the_numpy_rules_bit_for_bit(device, profile, modality):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (36, 54, 3), dtype=np.uint8)
    for depth_range in ((0.0, 10.0), (0.3, 7.7)):
        for size in (None, (40, 30)):
            for name, x in _x_images(rng, 36, 54).items():
                got = preprocess_pair(rgb, x, profile, modality, depth_range, size, device=device)
                want = _reference_inputs(rgb, x, profile, modality, depth_range, size)
                for g, w in zip(got, want):
                    assert g.device.type == device and g.dtype == torch.float32 and g.shape == w.shape
                    # bilinear resizing may round differently on a GPU; everything else is exact there too
                    exact = device == "cpu" or (size is None and x.shape[:2] == rgb.shape[:2])
                    g = g.cpu()
                    assert torch.equal(g, w) if exact else torch.allclose(g, w, atol=1e-5), \
                        (name, depth_range, size, (g - w).abs().max())


@pytest.mark.parametrize("device", DEVICES)
def test_x_to_uint8_tensor_on_every_16bit_value(device):
    from sigma_ros.preprocess import upload, x_to_uint8_tensor

    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    for profile, modality, depth_range in (("official", "depth", (0.0, 10.0)), ("rgb", "thermal", (0.0, 10.0)),
                                           ("rgb", "depth", (0.0, 10.0)), ("rgb", "depth", (0.3, 7.7))):
        got = x_to_uint8_tensor(upload(every, device), profile, modality, depth_range).cpu().numpy()
        assert np.array_equal(got, _reference_x(every, profile, modality, depth_range)), (profile, modality)
    assert np.array_equal(x_to_uint8(every), every >> 8)  # the numpy entry point runs the same code


@pytest.mark.parametrize("device", DEVICES)
def test_upload_keeps_every_frame_intact(device):
    """Many uploads in flight at once (pinned staging blocks are reused only after their copy has finished)."""
    from sigma_ros.preprocess import upload

    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 65536, (120, 160), dtype=np.uint16) for _ in range(8)]
    frames += [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(8)]
    frames += [rng.standard_normal((120, 160)).astype(np.float32) for _ in range(4)]
    uploaded = [upload(f, device) for f in frames]
    for f, t in zip(frames, uploaded):
        assert t.device.type == device and tuple(t.shape) == f.shape
        assert np.array_equal(t.cpu().numpy().view(f.dtype), f)  # uint16 travels as int16: the same bits


def _tied_scores(rng, k, h, w):
    """Logits with many exact ties between classes, plus ordinary floats."""
    scores = rng.integers(0, 3, (k, h, w)).astype(np.float32)
    scores[:, : h // 2] = rng.standard_normal((k, h // 2, w)).astype(np.float32) * 4
    return scores


@pytest.mark.parametrize("device", DEVICES)
def test_labels_from_scores_tensor_equals_the_numba_kernel(device):
    from sigma_ros.postprocess import labels_from_scores, labels_from_scores_tensor

    rng = np.random.default_rng(4)
    for k in (1, 2, 9, 40):
        scores = _tied_scores(rng, k, 31, 47)
        if device == "cpu":
            labels, conf = labels_from_scores(scores, confidence=True)
        else:  # against torch on the CPU, which the CPU case ties to the kernel (GPU machines may lack numba)
            labels, conf = (t.numpy() for t in labels_from_scores_tensor(torch.from_numpy(scores), confidence=True))
        t_labels, t_conf = labels_from_scores_tensor(torch.from_numpy(scores).to(device), confidence=True)
        assert t_labels.dtype == torch.int64 and t_conf.dtype == torch.float32
        assert np.array_equal(t_labels.cpu().numpy(), labels), k  # ties: the first maximal class, like the kernel
        assert np.abs(t_conf.cpu().numpy() - conf).max() <= 1e-6
        assert labels_from_scores_tensor(torch.from_numpy(scores).to(device))[1] is None
        if k > 1:
            assert ((scores == scores.max(0)).sum(0) > 1).any()  # ties were really there


@pytest.mark.parametrize("device", DEVICES)
def test_colorize_and_overlay_tensor_equal_numpy(device):
    from sigma_ros.postprocess import colorize_tensor, overlay_tensor, palette_lut

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 300, (29, 37))
    labels[0, :3] = [255, 299, 0]
    rgb = rng.integers(0, 256, (29, 37, 3), dtype=np.uint8)
    for pal in (voc_palette(9), voc_palette(300)):  # ids beyond a 9-colour palette (up to 255) are drawn black
        ids = labels % len(palette_lut(pal))
        lut = torch.from_numpy(palette_lut(pal)).to(device)
        color = colorize_tensor(torch.from_numpy(ids).to(device), lut)
        assert np.array_equal(color.cpu().numpy(), colorize(ids, pal))
        for alpha in (0.0, 0.3, 0.5, 0.77, 1.0, 1.5):
            got = overlay_tensor(torch.from_numpy(rgb).to(device), color, alpha).cpu().numpy()
            assert got.dtype == np.uint8 and np.array_equal(got, overlay(rgb, ids, pal, alpha)), alpha


def test_segment_on_device_gives_the_cpu_path_results(micro_checkpoint):
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    thermal = rng.integers(0, 65536, (25, 35), dtype=np.uint16)
    for kw in ({}, {"input_size": (64, 48)}):
        seg = Segmenter.from_checkpoint(micro_checkpoint, device="cpu", **kw)
        assert not seg.draws_on_device  # the node keeps the numba path on the CPU
        want = seg(rgb, thermal, confidence=True)
        got = seg.segment_on_device(rgb, thermal, confidence=True)
        assert np.array_equal(got.rgb.numpy(), rgb) and got.labels.shape == (50, 70)
        assert np.array_equal(got.labels.numpy(), want.labels)
        assert np.abs(got.confidence.numpy() - want.confidence).max() <= 1e-6
        assert seg.segment_on_device(rgb, thermal).confidence is None
