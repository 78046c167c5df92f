"""``sigma-ros pseudo-label``: draft labels with low-confidence pixels set to 255, written as real PNG files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image


def _run(*argv) -> int:
    from sigma_ros.cli import main

    return main(["pseudo-label", *map(str, argv)])


@pytest.fixture
def unlabelled(tmp_path):
    """A synthetic dataset with its Label/ folder removed (what `sigma-ros extract` gives without a label topic)."""
    from sigma_ros.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "data", n_train=3, n_test=2, height=40, width=56, seed=5)
    shutil.rmtree(root / "Label")
    return root


def test_threshold_function():
    from sigma_ros.tools.pseudo_label import pseudo_labels

    labels = np.array([[0, 1], [2, 3]])
    conf = np.array([[0.95, 0.5], [0.9, 0.89999]], dtype=np.float32)
    np.testing.assert_array_equal(pseudo_labels(labels, conf, 0.9), [[0, 255], [2, 255]])
    np.testing.assert_array_equal(pseudo_labels(labels, conf, 0.0), labels)
    assert (pseudo_labels(labels, conf, 1.0) == 255).all()


def test_writes_labels_matching_the_segmenter(unlabelled, micro_checkpoint):
    from sigma_ros.data.datasets import open_dataset
    from sigma_ros.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(micro_checkpoint, device="cpu")
    first = open_dataset(unlabelled, "train")[0]
    ref = seg(first["rgb"], first["x"], confidence=True)
    threshold = float(np.median(ref.confidence))  # about half the pixels on each side

    assert _run("--checkpoint", micro_checkpoint, "--data", unlabelled, "--threshold", threshold,
                "--device", "cpu", "--color-dir", unlabelled / "preview") == 0
    files = sorted((unlabelled / "Label").glob("*.png"))
    names = sorted(open_dataset(unlabelled, "train").names + open_dataset(unlabelled, "test").names)
    assert [f.stem for f in files] == names  # train and test, each once
    with Image.open(unlabelled / "Label" / f"{first['name']}.png") as im:
        assert im.mode == "L" and im.size == (56, 40)
        got = np.asarray(im)
    want = np.where(ref.confidence >= threshold, ref.labels, 255)
    np.testing.assert_array_equal(got, want)
    assert 0.2 < (got == 255).mean() < 0.8
    assert len(list((unlabelled / "preview").glob("*.png"))) == len(names)
    summary = json.loads((unlabelled / "pseudo_label.json").read_text())
    assert summary["written"] == len(names) and summary["threshold"] == pytest.approx(threshold)

    # the dataset now has labels the trainer and evaluator accept
    ds = open_dataset(unlabelled, "test", require_labels=True)
    assert ds[0]["label"].shape == (40, 56)


def test_existing_labels_are_kept_unless_overwrite(unlabelled, micro_checkpoint, capsys):
    (unlabelled / "Label").mkdir()
    name = (unlabelled / "train.txt").read_text().split()[0]
    mine = np.full((40, 56), 3, np.uint8)
    Image.fromarray(mine).save(unlabelled / "Label" / f"{name}.png")
    assert _run("--checkpoint", micro_checkpoint, "--data", unlabelled, "--split", "train", "--device", "cpu",
                "--threshold", "0") == 0
    assert "kept 1 existing" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(Image.open(unlabelled / "Label" / f"{name}.png")), mine)
    assert len(list((unlabelled / "Label").glob("*.png"))) == 3  # train split only
    assert _run("--checkpoint", micro_checkpoint, "--data", unlabelled, "--split", "train", "--device", "cpu",
                "--threshold", "0", "--overwrite") == 0
    replaced = np.asarray(Image.open(unlabelled / "Label" / f"{name}.png"))
    assert (replaced != 255).all() and not (replaced == 3).all()  # threshold 0 keeps every pixel


def test_threshold_one_marks_everything_ignore(unlabelled, micro_checkpoint, tmp_path):
    out = tmp_path / "drafts"
    assert _run("--checkpoint", micro_checkpoint, "--data", unlabelled, "--threshold", "1.0", "--out-dir", out,
                "--device", "cpu", "--split", "test") == 0
    files = list(out.glob("*.png"))
    assert len(files) == 2 and all((np.asarray(Image.open(f)) == 255).all() for f in files)
    assert not (unlabelled / "Label").exists()


def test_errors(unlabelled, micro_checkpoint, tmp_path, capsys):
    assert _run("--checkpoint", micro_checkpoint, "--data", tmp_path / "none", "--device", "cpu") == 2
    assert "does not exist" in capsys.readouterr().err
    assert _run("--checkpoint", micro_checkpoint, "--data", unlabelled, "--threshold", "1.5") == 2
    assert "threshold" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "RGB").mkdir(parents=True)
    (empty / "Modal").mkdir()
    assert _run("--checkpoint", micro_checkpoint, "--data", empty, "--device", "cpu") == 2
    assert "no train/val/test split" in capsys.readouterr().err
