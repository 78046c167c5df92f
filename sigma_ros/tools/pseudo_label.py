"""``sigma-ros pseudo-label``: draft ``Label/`` PNGs for an extracted dataset, to correct in an annotation tool.

Every pixel gets the checkpoint's class, except where the top softmax probability is below ``--threshold``: those
become 255 (ignore), which the trainer and evaluator skip. Existing label files are never overwritten unless
``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="dataset folder (e.g. written by sigma-ros extract)")
    p.add_argument("--split", default="all", help="train | test | all [all]")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="pixels whose max softmax probability is below this become 255 [0.9]")
    p.add_argument("--out-dir", default=None, help="where the PNGs go [DATA/Label]")
    p.add_argument("--overwrite", action="store_true", help="replace label files that already exist")
    p.add_argument("--color-dir", default=None, help="also write colourised previews here")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--classes", "--config", dest="config", default=None,
                   help="class config: mfnet|pst900|nyu|sunrgbd or a YAML (for checkpoints without class names)")
    p.add_argument("--modality", choices=["thermal", "depth"], default=None)
    p.add_argument("--depth-range", default=None, metavar="MIN,MAX")
    p.add_argument("--threads", type=int, default=None)


def run(args) -> int:
    try:
        return _run(args)
    except (ValueError, RuntimeError, FileExistsError) as e:
        print(f"sigma-ros pseudo-label: error: {e}", file=sys.stderr)
        return 2


def pseudo_labels(labels: np.ndarray, confidence: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 label image with 255 wherever confidence < threshold."""
    out = labels.astype(np.uint8, copy=True)
    out[confidence < threshold] = 255
    return out


_LABEL_DIRS = {"label", "labels", "labels_resize", "label_resize", "gt"}


def _without_labels(root: Path, tmp: Path) -> Path:
    """A view of ``root`` without its label folders (symlinks), so a half-labelled dataset opens for reading
    RGB/X only -- e.g. after an interrupted pseudo-label run or when a few frames were annotated by hand."""
    view = tmp / root.name
    view.mkdir()
    for child in root.iterdir():
        if child.name.lower() in _LABEL_DIRS:
            continue
        if child.is_dir() and any(c.name.lower() in _LABEL_DIRS for c in child.iterdir()):  # PST900 split folders
            (view / child.name).mkdir()
            for c in child.iterdir():
                if c.name.lower() not in _LABEL_DIRS:
                    (view / child.name / c.name).symlink_to(c.resolve())
        else:
            (view / child.name).symlink_to(child.resolve())
    return view


def _open(root: Path, split: str, tmp: Path):
    from sigma_ros.training.data import DatasetError, open_split

    try:
        return open_split(root, split, require_labels=False)
    except DatasetError as e:
        if "label" not in str(e).lower():
            raise
        return open_split(_without_labels(root, tmp) if not (tmp / root.name).exists() else tmp / root.name, split,
                          require_labels=False)


def _samples(root: Path, split: str, tmp: Path):
    """Datasets to label; 'all' = every split list present (train, val, test), each sample once."""
    from sigma_ros.training.data import DatasetError

    if split != "all":
        return [_open(root, split, tmp)]
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    found, problems = [], []
    for s in ("train", "val", "test"):
        try:
            found.append(_open(root, s, tmp))
        except DatasetError as e:
            problems.append(str(e))
    if not found:
        raise DatasetError(f"{root}: no train/val/test split found (expected train.txt / test.txt): "
                           + "; ".join(dict.fromkeys(problems)))
    return found


def _run(args) -> int:
    import torch

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be within [0, 1], got {args.threshold}")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    out_dir = Path(args.out_dir) if args.out_dir else data / "Label"
    tmp = Path(tempfile.mkdtemp(prefix=".pseudo_label."))
    try:
        return _label(args, data, out_dir, _samples(data, args.split, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _label(args, data: Path, out_dir: Path, datasets) -> int:
    from PIL import Image
    from tqdm import tqdm

    from sigma_ros.postprocess import colorize
    from sigma_ros.segmenter import Segmenter
    from sigma_ros.tools.common import parse_range

    seg = Segmenter.from_checkpoint(args.checkpoint, class_config=args.config, device=args.device,
                                    precision=args.precision, modality=args.modality,
                                    depth_range=parse_range(args.depth_range))
    if seg.num_classes > 255:
        raise ValueError(f"{seg.num_classes} classes do not fit 8-bit labels with 255 as ignore")
    todo, seen = [], set()
    for ds in datasets:
        for i in range(len(ds)):
            todo.append((ds, i))
    out_dir.mkdir(parents=True, exist_ok=True)
    color_dir = Path(args.color_dir) if args.color_dir else None
    if color_dir:
        color_dir.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    kept = []
    counts = np.zeros(seg.num_classes, dtype=np.int64)
    t0 = time.perf_counter()
    for ds, i in tqdm(todo, desc="pseudo-label", unit="img", dynamic_ncols=True):
        name = str(ds.names[i])
        if name in seen:
            continue
        seen.add(name)
        target = out_dir / f"{name}.png"
        if target.exists() and not args.overwrite:  # hand-made or earlier labels stay
            skipped += 1
            continue
        item = ds[i]
        res = seg(np.asarray(item["rgb"]), item["x"], confidence=True)
        lab = pseudo_labels(res.labels, res.confidence, args.threshold)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        Image.fromarray(lab, "L").save(tmp, format="PNG")
        tmp.replace(target)  # never leave a half-written label behind
        if color_dir:
            Image.fromarray(colorize(lab, seg.palette)).save(color_dir / f"{name}.png")
        valid = lab != 255
        kept.append(float(valid.mean()))
        counts += np.bincount(lab[valid].ravel(), minlength=seg.num_classes)[: seg.num_classes]
        written += 1
    dt = time.perf_counter() - t0
    summary = {
        "checkpoint": str(args.checkpoint), "data": str(data), "out_dir": str(out_dir), "threshold": args.threshold,
        "written": written, "skipped_existing": skipped,
        "mean_labelled_fraction": float(np.mean(kept)) if kept else None,
        "class_pixels": {n: int(c) for n, c in zip(seg.class_names, counts)},
    }
    (out_dir.parent / "pseudo_label.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {written} draft labels to {out_dir} in {dt:.1f} s"
          + (f"; kept {skipped} existing files (--overwrite replaces them)" if skipped else ""))
    if kept:
        print(f"on average {100 * np.mean(kept):.1f}% of the pixels are labelled, the rest (confidence < "
              f"{args.threshold}) are 255 = ignore; details in {out_dir.parent / 'pseudo_label.json'}")
    return 0
