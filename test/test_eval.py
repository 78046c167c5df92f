"""Evaluation: metrics against hand-computed numbers, the official multi-scale/flip/sliding semantics, and the
``sigma-ros eval`` command on a real checkpoint and dataset folder."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from sigma_ros.training.evaluate import EvalOptions, evaluate, predict_labels, predict_scores
from sigma_ros.training.metrics import SegMetrics, confusion_matrix, save_confusion_png


# ---------------------------------------------------------------------------------------------------------------
# metrics on a hand-made case
# ---------------------------------------------------------------------------------------------------------------
def test_confusion_and_scores_match_hand_computation():
    # 3 classes, 2x5 image; 255 = ignore; class 2 present but never predicted.
    label = np.array([[0, 0, 1, 1, 2],
                      [0, 255, 1, 2, 2]])
    pred = np.array([[0, 1, 1, 1, 0],
                     [0, 2, 0, 1, 1]])
    cm = confusion_matrix(pred, label, 3)
    # rows = ground truth, columns = prediction; the ignored pixel (pred 2) does not count
    expected = np.array([[2, 1, 0],
                         [1, 2, 0],
                         [1, 2, 0]])
    np.testing.assert_array_equal(cm, expected)
    m = SegMetrics(cm, ["a", "b", "c"])
    # IoU = TP / (row + col - TP): a: 2/(3+4-2)=0.4, b: 2/(3+5-2)=1/3, c: 0/(3+0-0)=0
    np.testing.assert_allclose(m.iou, [0.4, 1 / 3, 0.0])
    assert m.miou == pytest.approx((0.4 + 1 / 3 + 0.0) / 3)
    assert m.pixel_accuracy == pytest.approx(4 / 9)
    np.testing.assert_allclose(m.class_accuracy, [2 / 3, 2 / 3, 0.0])
    assert m.labeled_pixels == 9
    d = m.to_dict()
    assert d["per_class_iou"]["c"] == 0.0 and d["confusion_matrix"] == expected.tolist()
    # torch input gives the same matrix
    np.testing.assert_array_equal(confusion_matrix(torch.as_tensor(pred), torch.as_tensor(label), 3).numpy(), cm)


def test_absent_class_is_left_out_of_miou_like_nanmean():
    label = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 0])
    m = SegMetrics(confusion_matrix(pred, label, 4))  # classes 2, 3 never appear nor are predicted
    assert np.isnan(m.iou[2]) and np.isnan(m.iou[3])
    assert m.miou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m.to_dict()["per_class_iou"]["class_2"] is None
    # a class that is predicted but absent from the labels counts as IoU 0
    m2 = SegMetrics(confusion_matrix(np.array([0, 0, 1, 2]), label, 3))
    assert m2.iou[2] == 0.0 and m2.miou == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_confusion_png_is_written(tmp_path):
    from PIL import Image

    path = save_confusion_png(tmp_path / "cm.png", np.array([[5, 1], [0, 3]]), ["x", "y"])
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


# ---------------------------------------------------------------------------------------------------------------
# inference schemes, with small deterministic models
# ---------------------------------------------------------------------------------------------------------------
class Pointwise(nn.Module):
    """Logits from a 1x1 convolution: translation-equivariant, so windows can be compared with the full image."""

    def __init__(self, k=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(6, k, 1)

    def forward(self, rgb, x):
        return self.conv(torch.cat([rgb, x], 1))


class Constant(nn.Module):
    """Logits 0 everywhere: exp-score 1 per pass, so summed scores count the passes covering each pixel."""

    def __init__(self, k=3):
        super().__init__()
        self.k = k
        self.calls = []

    def forward(self, rgb, x):
        self.calls.append(tuple(rgb.shape[-2:]))
        return rgb.new_zeros(rgb.shape[0], self.k, *rgb.shape[-2:])


class LeftRight(nn.Module):
    """Logit of class 0 = column index, class 1 = 0: a flip changes the answer (not flip-invariant)."""

    def forward(self, rgb, x):
        w = rgb.shape[-1]
        col = torch.arange(w, dtype=rgb.dtype).expand(*rgb.shape[-2:]) / w
        return torch.stack([col + rgb[:, 0], torch.zeros_like(col).expand_as(rgb[:, 0])], 1)


def _inputs(h=40, w=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, h, w, generator=g), torch.randn(1, 3, h, w, generator=g)


def test_single_scale_is_argmax_of_logits():
    model = Pointwise()
    rgb, x = _inputs()
    torch.testing.assert_close(predict_labels(model, rgb, x), model(rgb, x).argmax(1))
    # explicit scores path gives the same labels
    scores = predict_scores(model, rgb, x, EvalOptions())
    torch.testing.assert_close(scores, model(rgb, x).double().exp())


def test_flip_adds_logits_before_exp():
    model = LeftRight()
    rgb, x = _inputs()
    s = predict_scores(model, rgb, x, EvalOptions(flip=True))
    lg = model(rgb, x).double()
    lf = model(rgb.flip(-1), x.flip(-1)).double().flip(-1)
    torch.testing.assert_close(s, (lg + lf).exp(), rtol=1e-6, atol=0)
    # and not the sum of separate exp-scores
    assert not torch.allclose(s, lg.exp() + lf.exp())


def test_multi_scale_sums_resized_exp_scores():
    import torch.nn.functional as F

    model = Pointwise()
    rgb, x = _inputs(48, 64)
    opts = EvalOptions(scales=(0.5, 1.0, 1.25))
    got = predict_scores(model, rgb, x, opts)
    want = torch.zeros_like(got)
    for s in opts.scales:
        size = (round(48 * s), round(64 * s))
        r = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False) if s != 1 else rgb
        xx = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if s != 1 else x
        sc = model(r, xx).double().exp()
        want += F.interpolate(sc, size=(48, 64), mode="bilinear", align_corners=False) if s != 1 else sc
    torch.testing.assert_close(got, want)


def test_sliding_window_grid_and_coverage():
    model = Constant()
    rgb, x = _inputs(50, 70)
    crop = (32, 40)
    s = predict_scores(model, rgb, x, EvalOptions(crop=crop))
    # stride ceil(2/3 crop) = (22, 27): rows start 0, 18 (clamped to the bottom), cols 0, 27, 30 (clamped)
    assert math.ceil(32 * 2 / 3) == 22 and math.ceil(40 * 2 / 3) == 27
    assert all(c == crop for c in model.calls)
    assert len(model.calls) == 2 * 3
    counts = s[0, 0].numpy()
    row_cover = np.zeros(50)
    for y0 in (0, 18):
        row_cover[y0:y0 + 32] += 1
    col_cover = np.zeros(70)
    for x0 in (0, 27, 30):
        col_cover[x0:x0 + 40] += 1
    np.testing.assert_array_equal(counts, np.outer(row_cover, col_cover))
    assert counts.min() >= 1


def test_sliding_window_of_pointwise_model_matches_full_image():
    model = Pointwise()
    rgb, x = _inputs(50, 70)
    full = predict_labels(model, rgb, x)
    slid = predict_labels(model, rgb, x, EvalOptions(crop=(32, 40)))
    torch.testing.assert_close(slid, full)


def test_small_image_is_padded_to_the_crop_and_cut_back():
    model = Constant()
    rgb, x = _inputs(30, 90)  # rows below the crop: one pass over the whole width, padded rows
    s = predict_scores(model, rgb, x, EvalOptions(crop=(40, 40)))
    assert model.calls == [(40, 90)]
    assert s.shape == (1, 3, 30, 90) and torch.all(s == 1)
    pw = Pointwise()
    torch.testing.assert_close(predict_labels(pw, rgb, x, EvalOptions(crop=(40, 40))), predict_labels(pw, rgb, x))


def test_evaluate_accumulates_confusion_over_samples():
    model = Pointwise(k=3)
    samples = []
    want = np.zeros((3, 3), dtype=np.int64)
    for i in range(3):
        rgb, x = _inputs(36, 44, seed=i)
        label = torch.randint(0, 3, (36, 44), generator=torch.Generator().manual_seed(10 + i))
        label[0, :5] = 255
        pred = model(rgb, x).argmax(1)[0]
        want += confusion_matrix(pred.numpy(), label.numpy(), 3)
        samples.append((rgb[0], x[0], label, f"s{i}"))
    res = evaluate(model.eval(), samples, 3, "cpu", EvalOptions(), ["a", "b", "c"])
    np.testing.assert_array_equal(res.metrics.confusion, want)
    assert res.images == 3 and res.metrics.labeled_pixels == 3 * (36 * 44 - 5)


# ---------------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from sigma_ros.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_train=2, n_test=3, height=48, width=64, seed=3)


@pytest.fixture(scope="module")
def syn_checkpoint(tmp_path_factory):
    from sigma_ros.data.synthetic import SYNTHETIC_CLASS_NAMES, SYNTHETIC_PALETTE
    from sigma_ros.model import SigmaConfig, build_sigma, save_checkpoint

    torch.manual_seed(1)
    cfg = SigmaConfig.micro(num_classes=len(SYNTHETIC_CLASS_NAMES))
    path = tmp_path_factory.mktemp("ck") / "syn.pt"
    save_checkpoint(path, build_sigma(cfg), cfg, class_names=SYNTHETIC_CLASS_NAMES, palette=SYNTHETIC_PALETTE,
                    preprocessing="rgb", extra={"modality": "thermal", "crop": [32, 48]})
    return path


def _direct_confusion(ck_path, data, scales=(1.0,), flip=False, crop=None):
    from sigma_ros.data.datasets import open_dataset
    from sigma_ros.model import load_checkpoint
    from sigma_ros.preprocess import preprocess_pair

    ck = load_checkpoint(ck_path)
    ds = open_dataset(data, "test")
    k = ck.config.num_classes
    cm = np.zeros((k, k), dtype=np.int64)
    for item in ds:
        rgb, x = preprocess_pair(item["rgb"], item["x"], "rgb", "thermal")
        pred = predict_labels(ck.model, rgb[None], x[None], EvalOptions(scales=scales, flip=flip, crop=crop))[0]
        cm += confusion_matrix(pred.numpy(), item["label"], k)
    return cm


def test_eval_command_json_matches_direct_computation(tiny_dataset, syn_checkpoint, tmp_path):
    from sigma_ros.cli import main

    out = tmp_path / "m.json"
    rc = main(["eval", "--checkpoint", str(syn_checkpoint), "--data", str(tiny_dataset), "--json", str(out),
               "--device", "cpu"])  # the same device as _direct_confusion: its pixels must agree exactly
    assert rc == 0
    doc = json.loads(out.read_text())
    cm = np.array(doc["confusion_matrix"])
    np.testing.assert_array_equal(cm, _direct_confusion(syn_checkpoint, tiny_dataset))
    m = SegMetrics(cm)
    assert doc["mIoU"] == pytest.approx(m.miou) and doc["pixel_accuracy"] == pytest.approx(m.pixel_accuracy)
    assert cm.sum() == doc["labeled_pixels"] > 0
    assert (tmp_path / "m_confusion.png").stat().st_size > 1000
    assert doc["images"] == 3 and doc["scales"] == [1.0] and doc["flip"] is False


def test_eval_command_multiscale_flip_sliding(tiny_dataset, syn_checkpoint, tmp_path):
    from sigma_ros.cli import main

    out = tmp_path / "ms.json"
    rc = main(["eval", "--checkpoint", str(syn_checkpoint), "--data", str(tiny_dataset), "--json", str(out),
               "--device", "cpu", "--multi-scale", "0.75,1,1.25", "--flip", "--sliding",
               "--confusion-png", str(tmp_path / "c.png")])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["scales"] == [0.75, 1.0, 1.25] and doc["flip"] and doc["crop"] == [32, 48]
    want = _direct_confusion(syn_checkpoint, tiny_dataset, (0.75, 1.0, 1.25), True, (32, 48))
    np.testing.assert_array_equal(np.array(doc["confusion_matrix"]), want)
    assert (tmp_path / "c.png").exists()


def test_eval_command_errors(tiny_dataset, syn_checkpoint, tmp_path, capsys):
    from sigma_ros.cli import main

    assert main(["eval", "--checkpoint", str(syn_checkpoint), "--data", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tiny_dataset)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(syn_checkpoint), "--data", str(tiny_dataset), "--split", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(syn_checkpoint), "--data", str(tiny_dataset),
                 "--multi-scale", "a,b"]) == 2
    assert "--multi-scale" in capsys.readouterr().err


def test_eval_command_on_an_official_format_checkpoint(tiny_dataset, syn_checkpoint, tmp_path):
    """The authors' format ({'model': state_dict}, no class names): official preprocessing, names from --classes."""
    from sigma_ros.cli import main
    from sigma_ros.model import load_checkpoint

    official = tmp_path / "official.pth"
    torch.save({"model": load_checkpoint(syn_checkpoint).model.state_dict(), "epoch": 500}, official)
    out = tmp_path / "o.json"
    assert main(["eval", "--checkpoint", str(official), "--data", str(tiny_dataset), "--json", str(out),
                 "--classes", str(tiny_dataset / "classes.yaml")]) == 0
    doc = json.loads(out.read_text())
    assert doc["preprocessing"] == "official" and doc["class_names"][0] == "sky"
    # BGR input changes the result, so the profile really was applied
    mine = tmp_path / "mine.json"
    assert main(["eval", "--checkpoint", str(official), "--data", str(tiny_dataset), "--json", str(mine),
                 "--preprocessing", "rgb"]) == 0
    assert json.loads(mine.read_text())["confusion_matrix"] != doc["confusion_matrix"]
