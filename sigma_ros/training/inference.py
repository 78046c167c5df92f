"""Loading a checkpoint once into a Segmenter, with the modality settings the trainer recorded in it."""
from __future__ import annotations


def segmenter_from_checkpoint(path, *, class_config=None, device: str = "auto", precision: str = "fp32",
                              modality: str | None = None, depth_range=None, **kw):
    """Like ``Segmenter.from_checkpoint`` but also applies the checkpoint's recorded modality / depth range
    (``extra`` written by ``sigma-ros train``); explicit arguments win. Returns (segmenter, checkpoint)."""
    from sigma_ros.classes import load_class_config
    from sigma_ros.model import CheckpointError, load_checkpoint
    from sigma_ros.segmenter import Segmenter

    classes = load_class_config(class_config) if class_config else None
    ck = load_checkpoint(path, num_classes=classes.num_classes if classes else None)
    extra = ck.extra or {}
    names = classes.class_names if classes else ck.class_names
    palette = classes.palette if classes else ck.palette
    if names is not None and len(names) != ck.config.num_classes:
        raise CheckpointError(f"{path}: {len(names)} class names for {ck.config.num_classes} model classes")
    if ck.official:
        preprocessing = "official"
        modality = modality or (classes.modality if classes else "thermal")
    else:
        preprocessing = ck.preprocessing or "rgb"
        modality = modality or extra.get("modality") or "thermal"
    if depth_range is None:
        depth_range = tuple(extra.get("depth_range") or (0.0, 10.0))
    seg = Segmenter(ck.model, ck.config, class_names=names, palette=palette, preprocessing=preprocessing,
                    device=device, precision=precision, modality=modality, depth_range=tuple(depth_range),
                    checkpoint_path=str(path), **kw)
    return seg, ck


def parse_range(text: str | None):
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"expected MIN,MAX such as 0.5,8, got {text!r}") from None
    return lo, hi
