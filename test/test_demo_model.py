"""The bundled demo checkpoint (models/sigma_micro_synthetic.pt): it loads with everything a node needs, and on a
freshly generated synthetic test split (the generator, seed and size recorded in models/sigma_micro_synthetic.json)
``sigma-ros eval`` reproduces the mIoU recorded there."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "models" / "sigma_micro_synthetic.pt"
CARD = REPO / "models" / "sigma_micro_synthetic.json"
MAX_BYTES = 15 * 1024 * 1024  # the repository's limit for bundled checkpoints
# Same scenes, same weights: only float summation order (BLAS kernels, thread count, numba fastmath) differs
# between machines, which moves a few boundary pixels. 1 mIoU point is far above that and far below what a
# broken model, preprocessing or generator change costs.
MIOU_TOL = 0.01


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(CARD.read_text())


def test_checkpoint_is_small_and_loads_with_classes_and_profile(card):
    from sigma_ros.data.synthetic import SYNTHETIC_CLASS_NAMES, SYNTHETIC_PALETTE
    from sigma_ros.model import load_checkpoint

    assert CHECKPOINT.stat().st_size <= MAX_BYTES
    ck = load_checkpoint(CHECKPOINT)
    assert ck.config.variant == "micro" and ck.config.num_classes == len(SYNTHETIC_CLASS_NAMES)
    assert ck.class_names == SYNTHETIC_CLASS_NAMES
    np.testing.assert_array_equal(ck.palette, SYNTHETIC_PALETTE)
    assert ck.preprocessing == "rgb"
    assert ck.extra.get("blank") is None  # the fused model: both modalities are used
    assert not ck.model.training


def test_checkpoint_reaches_recorded_miou_on_fresh_synthetic_test_split(tmp_path, card):
    from sigma_ros.data.synthetic import write_synthetic_dataset
    from sigma_ros.tools import evaluate

    ds = card["dataset"]
    data = write_synthetic_dataset(tmp_path / "data", n_train=ds["n_train"], n_test=ds["n_test"],
                                   height=ds["height"], width=ds["width"], seed=ds["seed"])
    rec = card["test_eval"]
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", str(CHECKPOINT), "--data", str(data), "--split", rec["split"],
                              "--max-images", str(rec["images"]), "--device", "cpu",
                              "--json", str(tmp_path / "eval.json")])
    assert evaluate.run(args) == 0
    got = json.loads((tmp_path / "eval.json").read_text())
    assert got["images"] == rec["images"]
    assert got["mIoU"] == pytest.approx(rec["mIoU"], abs=MIOU_TOL)
    # every class, including those only one modality shows (people at night, markings, cones), is still found
    for name, iou in rec["per_class_iou"].items():
        assert got["per_class_iou"][name] == pytest.approx(iou, abs=3 * MIOU_TOL), name
    assert (tmp_path / "eval_confusion.png").stat().st_size > 0
