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


def test_labels_from_scores_equals_torch_argmax_and_softmax():
    from sigma_ros.postprocess import labels_from_scores

    scores = np.random.default_rng(1).standard_normal((7, 33, 45)).astype(np.float32)
    labels, conf = labels_from_scores(scores, confidence=True)
    ref_conf, ref_labels = torch.softmax(torch.from_numpy(scores), dim=0).max(dim=0)
    assert np.array_equal(labels, ref_labels.numpy()) and labels.dtype == np.int64
    assert np.allclose(conf, ref_conf.numpy(), atol=1e-6)
    assert labels_from_scores(scores)[1] is None
