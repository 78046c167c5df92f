"""``sigma-ros eval``: mIoU, per-class IoU, pixel accuracy and a confusion-matrix PNG for a checkpoint on a dataset.

Single scale by default; ``--multi-scale 0.75,1,1.25 --flip`` is the official NYU/SUN protocol and ``--sliding
--crop HxW`` the official sliding-window inference for images larger than the crop.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint (sigma_ros or the authors' format)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="test", help="split to evaluate [test]")
    p.add_argument("--json", default=None, help="write all numbers (incl. the confusion matrix) to this JSON file")
    p.add_argument("--confusion-png", default=None,
                   help="confusion matrix image [beside --json, else ./confusion_<split>.png]")
    p.add_argument("--multi-scale", default=None, metavar="S1,S2,..",
                   help="scales whose exp-scores are summed, e.g. 0.75,1,1.25 [1]")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped passes (official combination)")
    p.add_argument("--sliding", action="store_true", help="sliding-window inference with --crop (stride 2/3 crop)")
    p.add_argument("--crop", default=None, help="crop HxW for --sliding [the checkpoint's training crop]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda [auto]")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--classes", default=None, help="class config for checkpoints without class names")
    p.add_argument("--preprocessing", choices=["rgb", "official"], default=None,
                   help="override the checkpoint's input profile (official checkpoints: official)")
    p.add_argument("--modality", choices=["thermal", "depth"], default=None)
    p.add_argument("--depth-range", default=None, metavar="MIN,MAX", help="metres, for float depth images")
    blank = p.add_mutually_exclusive_group()
    blank.add_argument("--blank-x", dest="blank", action="store_const", const="x", default=None,
                       help="zero the X input (default: as the checkpoint was trained)")
    blank.add_argument("--blank-rgb", dest="blank", action="store_const", const="rgb")
    blank.add_argument("--no-blank", dest="blank", action="store_const", const="none",
                       help="feed both modalities even if the checkpoint was trained with one blanked")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def parse_scales(text: str | None) -> tuple[float, ...]:
    if not text:
        return (1.0,)
    try:
        scales = tuple(float(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--multi-scale expects comma-separated numbers such as 0.75,1,1.25, got {text!r}") from None
    if not scales or min(scales) <= 0:
        raise ValueError(f"--multi-scale needs positive scales, got {text!r}")
    return scales


def run(args) -> int:
    try:
        return _run(args)
    except ValueError as e:  # CheckpointError and DatasetError are ValueErrors with a full message
        print(f"sigma-ros eval: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import torch

    from sigma_ros.classes import generic_classes, load_class_config
    from sigma_ros.model import load_checkpoint
    from sigma_ros.training.config import parse_hw
    from sigma_ros.training.data import EvalSet, open_split
    from sigma_ros.training.evaluate import EvalOptions, evaluate
    from sigma_ros.training.metrics import save_confusion_png

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    ck = load_checkpoint(args.checkpoint, map_location=device)
    extra = ck.extra or {}
    names, cc = ck.class_names, None
    if args.classes or not names:
        cc = load_class_config(args.classes) if args.classes else generic_classes(ck.config.num_classes)
        if cc.num_classes != ck.config.num_classes:
            raise ValueError(f"class config {args.classes} has {cc.num_classes} classes, the checkpoint "
                             f"{ck.config.num_classes}")
        names = cc.class_names
    profile = args.preprocessing or ck.preprocessing or ("official" if ck.official else "rgb")
    modality = args.modality or extra.get("modality") or (cc.modality if args.classes else None) or "thermal"
    depth_range = tuple(float(v) for v in args.depth_range.split(",")) if args.depth_range else \
        tuple(extra.get("depth_range") or (0.0, 10.0))
    blank = {None: extra.get("blank"), "none": None}.get(args.blank, args.blank)

    crop = None
    if args.sliding:
        crop = parse_hw(args.crop) if args.crop else tuple(extra.get("crop") or ())
        if not crop:
            raise ValueError("--sliding needs --crop HxW (this checkpoint does not record its training crop)")
    elif args.crop:
        raise ValueError("--crop is used with --sliding; pass both")
    opts = EvalOptions(scales=parse_scales(args.multi_scale), flip=args.flip, crop=crop,
                       amp_dtype=torch.bfloat16 if args.amp else None)

    base = open_split(args.data, args.split)
    n = len(base) if not args.max_images else min(len(base), args.max_images)
    samples = EvalSet(base, profile=profile, modality=modality, depth_range=depth_range, blank=blank,
                      root=args.data, indices=range(n))
    print(f"evaluating {args.checkpoint} (Sigma-{ck.config.variant}, {ck.config.num_classes} classes) on {n} "
          f"'{args.split}' images of {args.data}: scales {list(opts.scales)}, flip {opts.flip}, "
          f"{'sliding ' + 'x'.join(map(str, crop)) if crop else 'whole image'}, {profile} preprocessing, "
          f"{modality}{', ' + blank + ' blanked' if blank else ''}, device {device}")
    res = evaluate(ck.model, samples, ck.config.num_classes, device, opts, names, progress=True,
                   desc=f"eval {args.split}")
    m = res.metrics
    print(m.table())
    print(f"{res.images} images in {res.seconds:.1f} s ({res.images / max(res.seconds, 1e-9):.2f} img/s)")

    png = Path(args.confusion_png) if args.confusion_png else (
        Path(args.json).with_name(Path(args.json).stem + "_confusion.png") if args.json
        else Path(f"confusion_{args.split}.png"))
    save_confusion_png(png, m.confusion, m.names(), title=f"{Path(args.checkpoint).name} on {args.split}: "
                                                            f"mIoU {100 * m.miou:.2f}")
    print(f"confusion matrix: {png}")
    if args.json:
        out = {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split, "images": res.images,
               "seconds": round(res.seconds, 3), "preprocessing": profile, "modality": modality, "blank": blank,
               **res.options, **m.to_dict()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"metrics: {args.json}")
    return 0
