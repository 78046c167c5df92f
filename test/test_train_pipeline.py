"""The user's path end to end, on CPU: bags recorded in both rosbag2 storage formats (written with rosbags) ->
``sigma-ros extract`` -> ``sigma-ros train`` (YAML config + flags) -> the loss falls and the model beats chance
clearly -> ``sigma-ros eval`` on the checkpoint reproduces the trainer's numbers."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from sigma_ros.cli import main

RGB, X, LABEL = "/camera/color/image_raw", "/camera/thermal/image_raw", "/camera/labels"
H, W = 64, 96


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    from sigma_ros.data.bags import write_synthetic_bag

    root = tmp_path_factory.mktemp("pipeline")
    bags = []
    for i, storage in enumerate(("sqlite3", "mcap")):
        info = write_synthetic_bag(root / f"drive_{storage}", n_frames=18, fps=10.0, storage=storage, height=H,
                                   width=W, seed=10 + i, label_topic=LABEL)
        bags.append(str(info["path"]))
    data = root / "dataset"
    assert main(["extract", *bags, "--rgb-topic", RGB, "--x-topic", X, "--label-topic", LABEL, "--out", str(data),
                 "--test-fraction", "0.25", "--quiet"]) == 0
    return data


def test_bags_to_trained_checkpoint(extracted, tmp_path):
    from sigma_ros.data.datasets import open_dataset
    from sigma_ros.data.synthetic import SYNTHETIC_CLASS_NAMES, SYNTHETIC_PALETTE
    from sigma_ros.model import load_checkpoint
    from sigma_ros.training.metrics import SegMetrics

    train_n, test_n = len(open_dataset(extracted, "train")), len(open_dataset(extracted, "test"))
    assert train_n + test_n == 36 and test_n >= 6
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "variant": "micro", "crop": [48, 64], "batch_size": 4, "lr": 2e-3, "warmup_steps": 5, "log_every": 5,
        "classes": {"names": SYNTHETIC_CLASS_NAMES, "palette": SYNTHETIC_PALETTE.tolist()},
        "tensorboard": False,
    }))
    run = tmp_path / "run"
    assert main(["train", "--data", str(extracted), "--out", str(run), "--config", str(config),
                 "--max-steps", "60", "--eval-every", "30", "--no-progress", "--threads", "2"]) == 0

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.6 * losses[0], losses  # the loss falls
    evals = [r for r in rows if r["mIoU"]]
    assert [int(r["step"]) for r in evals] == [30, 60]

    # chance level: always predicting the most frequent class of the test labels
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--data", str(extracted), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    cm = np.array(doc["confusion_matrix"])
    majority = cm.sum(1).max() / cm.sum()
    chance_miou = majority / len(SYNTHETIC_CLASS_NAMES)  # IoU of the majority class, 0 for the rest
    m = SegMetrics(cm)
    assert m.pixel_accuracy > majority + 0.15, (m.pixel_accuracy, majority)
    assert m.miou > max(0.2, 2.5 * chance_miou), (m.miou, chance_miou)
    # the trainer's own evaluation of the final step equals the eval command's
    assert float(evals[-1]["mIoU"]) == pytest.approx(doc["mIoU"], abs=1e-6)

    ck = load_checkpoint(run / "last.pt")
    assert ck.class_names == SYNTHETIC_CLASS_NAMES and ck.extra["step"] == 60
    np.testing.assert_array_equal(ck.palette, SYNTHETIC_PALETTE)
    assert ck.extra["modality"] == "thermal"  # from the extractor's manifest
