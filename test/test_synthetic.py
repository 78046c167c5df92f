"""sigma_ros.data.synthetic: deterministic scenes whose classes need both modalities."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from sigma_ros.data.synthetic import (
    CONE, MARKING, PERSON, SYNTHETIC_CLASS_NAMES, SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, make_scene, scene_seed,
    write_synthetic_dataset,
)

K = len(SYNTHETIC_CLASS_NAMES)


def test_scene_layout_and_determinism():
    a = make_scene(7, 96, 128)
    assert a["rgb"].shape == (96, 128, 3) and a["rgb"].dtype == np.uint8
    assert a["x"].shape == (96, 128) and a["x"].dtype == np.uint8
    assert a["label"].shape == (96, 128) and a["label"].dtype == np.uint8
    assert a["label"].max() < K
    b = make_scene(7, 96, 128)
    for key in ("rgb", "x", "label"):
        np.testing.assert_array_equal(a[key], b[key])
    c = make_scene(8, 96, 128)
    assert not np.array_equal(a["rgb"], c["rgb"]) and not np.array_equal(a["label"], c["label"])


def test_night_flag_and_both_kinds_from_seeds():
    assert make_scene(3, 64, 80, night=True)["night"] is True
    assert make_scene(3, 64, 80, night=False)["night"] is False
    kinds = {make_scene(s, 32, 40)["night"] for s in range(20)}
    assert kinds == {True, False}
    # night scenes are darker in RGB
    day = np.mean([make_scene(s, 64, 80, night=False)["rgb"].mean() for s in range(5)])
    night = np.mean([make_scene(s, 64, 80, night=True)["rgb"].mean() for s in range(5)])
    assert night < 0.5 * day


def test_every_class_appears_and_classes_config():
    seen = np.zeros(K, bool)
    for s in range(30):
        seen |= np.bincount(make_scene(s, 96, 128)["label"].ravel(), minlength=K) > 0
    assert seen.all(), [n for n, ok in zip(SYNTHETIC_CLASS_NAMES, seen) if not ok]
    assert SYNTHETIC_CLASSES.class_names == SYNTHETIC_CLASS_NAMES
    assert SYNTHETIC_CLASSES.num_classes == K
    np.testing.assert_array_equal(SYNTHETIC_CLASSES.palette, SYNTHETIC_PALETTE)
    assert len({tuple(c) for c in SYNTHETIC_PALETTE}) == K  # distinct colours


def test_480x640_scene_is_fast():
    make_scene(0)
    times = []
    for s in range(5):
        t = time.perf_counter()
        make_scene(s)
        times.append(time.perf_counter() - t)
    print(f"make_scene 480x640: best {min(times) * 1e3:.1f} ms, median {np.median(times) * 1e3:.1f} ms")
    assert min(times) < 0.1  # about 30 ms on an idle 2-core CI machine; the best of 5 resists load spikes


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(m, dy, 0), dx, 1)
    return out


def _contrast(scene, cls):
    """(RGB contrast, thermal contrast) between a class's inner pixels and a thin ring around them."""
    m = scene["label"] == cls
    inner = m & ~_dilate(~m, 1)  # eroded: skip the blurred edges
    ring = _dilate(m, 3) & ~_dilate(m, 1)
    if inner.sum() < 10:
        return None
    g, t = scene["rgb"].astype(float), scene["x"].astype(float)
    return np.abs(g[inner].mean(0) - g[ring].mean(0)).max(), abs(t[inner].mean() - t[ring].mean())


def _median_contrast(cls, night):
    got = [_contrast(make_scene(s, 192, 256, night=night), cls) for s in range(16)]
    got = np.array([g for g in got if g is not None])
    assert len(got) >= 8
    return np.median(got, axis=0)


def test_people_are_hot_and_at_night_not_in_rgb():
    rgb_night, th_night = _median_contrast(PERSON, True)
    rgb_day, th_day = _median_contrast(PERSON, False)
    assert th_night > 60 and th_day > 40
    assert rgb_day > 40
    assert rgb_night < th_night / 4


@pytest.mark.parametrize("cls", [MARKING, CONE])
def test_markings_and_cones_are_coloured_but_have_no_thermal_signature(cls):
    rgb_c, th_c = _median_contrast(cls, None)
    assert rgb_c > 40
    assert th_c < 5


def _features(scene):
    rgb = scene["rgb"].astype(np.int64) // 32  # 8 levels per channel
    t = scene["x"].astype(np.int64) // 16  # 16 levels
    f_rgb = rgb[..., 0] * 64 + rgb[..., 1] * 8 + rgb[..., 2]
    return {"rgb": (f_rgb, 512), "thermal": (t, 16), "both": (f_rgb * 16 + t, 512 * 16)}


def test_fusing_both_modalities_beats_either_alone():
    """A model-free check: per-pixel Bayes classifiers (joint histograms of quantised pixel values) trained on
    scenes, evaluated on other scenes. Using both modalities must clearly beat RGB alone and thermal alone."""
    train = [make_scene(s, 96, 128) for s in range(60)]
    test = [make_scene(10_000 + s, 96, 128) for s in range(30)]
    label = np.concatenate([sc["label"].ravel() for sc in test])
    night = np.concatenate([np.full(sc["label"].size, sc["night"]) for sc in test])
    results = {}
    for name in ("rgb", "thermal", "both"):
        nbins = _features(train[0])[name][1]
        hist = np.zeros((nbins, K))
        for sc in train:
            f, _ = _features(sc)[name]
            np.add.at(hist, (f.ravel(), sc["label"].ravel()), 1)
        lut = hist.argmax(1)
        pred = np.concatenate([lut[_features(sc)[name][0]].ravel() for sc in test])
        iou = np.array([((pred == k) & (label == k)).sum() / max(((pred == k) | (label == k)).sum(), 1)
                        for k in range(K)])
        night_person = ((pred == PERSON) & (label == PERSON) & night).sum() / ((label == PERSON) & night).sum()
        results[name] = (iou, night_person)
    iou_rgb, person_rgb = results["rgb"]
    iou_th, person_th = results["thermal"]
    iou_both, person_both = results["both"]
    print({k: (np.round(v[0], 2).tolist(), round(float(v[1]), 2)) for k, v in results.items()})
    assert iou_th[MARKING] < 0.05 and iou_th[CONE] < 0.05  # thermal cannot see paint or cones
    assert person_rgb < 0.05  # RGB cannot see people at night
    assert person_both > 0.3 and iou_both[MARKING] > 0.1 and iou_both[CONE] > 0.2
    assert iou_both.mean() > max(iou_rgb.mean(), iou_th.mean()) + 0.15


def test_write_synthetic_dataset(tmp_path):
    from sigma_ros.classes import load_class_config

    out = write_synthetic_dataset(tmp_path / "syn", n_train=3, n_test=2, height=48, width=64, seed=5)
    train = (out / "train.txt").read_text().split()
    test = (out / "test.txt").read_text().split()
    assert len(train) == 3 and len(test) == 2 and not set(train) & set(test)
    for i, name in enumerate(train + test):
        assert name.startswith(f"syn_{i:05d}") and name[-1] in "ND"
        scene = make_scene(scene_seed(5, i), 48, 64, night=name.endswith("N"))
        rgb = np.asarray(Image.open(out / "RGB" / f"{name}.png"))
        x = Image.open(out / "Modal" / f"{name}.png")
        lab = Image.open(out / "Label" / f"{name}.png")
        assert x.mode == "L" and lab.mode == "L"
        np.testing.assert_array_equal(rgb, scene["rgb"])
        np.testing.assert_array_equal(np.asarray(x), scene["x"])
        np.testing.assert_array_equal(np.asarray(lab), scene["label"])
    cfg = load_class_config(out / "classes.yaml")
    assert cfg.class_names == SYNTHETIC_CLASS_NAMES and cfg.preprocessing == "rgb"
    np.testing.assert_array_equal(cfg.palette, SYNTHETIC_PALETTE)
    # same seed -> same files
    again = write_synthetic_dataset(tmp_path / "syn2", n_train=3, n_test=2, height=48, width=64, seed=5)
    assert (again / "RGB" / f"{train[0]}.png").read_bytes() == (out / "RGB" / f"{train[0]}.png").read_bytes()


def test_too_small_scene_is_rejected():
    with pytest.raises(ValueError, match="at least 8x8"):
        make_scene(0, 4, 64)
