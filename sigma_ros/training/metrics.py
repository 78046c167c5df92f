"""Segmentation metrics computed the way the official Sigma code does (``utils/metric.py``).

The confusion matrix has ground truth along rows and predictions along columns. Pixels whose label is outside
``[0, num_classes)`` (255 = ignore) do not count. mIoU is the NaN-mean of the per-class IoU over *all* classes, so a
class that is neither present nor predicted (0/0) is left out, while a class that is present but never predicted
counts as 0 -- exactly like ``np.nanmean`` in the official ``compute_score``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def confusion_matrix(pred, label, num_classes: int):
    """(num_classes, num_classes) int64 confusion matrix of one or many images.

    ``pred`` and ``label`` are integer arrays or tensors of the same shape. Returns the same kind as the input
    (numpy in, numpy out; torch in, torch out on the input's device) so GPU evaluation never leaves the device.
    """
    if isinstance(pred, torch.Tensor):
        label = torch.as_tensor(label, device=pred.device)
        pred, label = pred.reshape(-1).long(), label.reshape(-1).long()
        keep = (label >= 0) & (label < num_classes)
        idx = label[keep] * num_classes + pred[keep]
        return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    label = np.asarray(label).reshape(-1).astype(np.int64)
    if pred.shape != label.shape:
        raise ValueError(f"prediction has {pred.size} pixels but the label has {label.size}")
    keep = (label >= 0) & (label < num_classes)
    idx = label[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass
class SegMetrics:
    """Scores derived from a confusion matrix (rows = ground truth, columns = prediction)."""

    confusion: np.ndarray
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN where the class is neither in the labels nor in the predictions."""
        h = self.confusion.astype(np.float64)
        tp = np.diag(h)
        union = h.sum(0) + h.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return tp / union

    @property
    def miou(self) -> float:
        iou = self.iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    @property
    def pixel_accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.diag(self.confusion).sum() / total) if total else float("nan")

    @property
    def class_accuracy(self) -> np.ndarray:
        """Per-class recall (NaN for classes absent from the labels)."""
        h = self.confusion.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.diag(h) / h.sum(1)

    @property
    def mean_accuracy(self) -> float:
        acc = self.class_accuracy
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")

    @property
    def labeled_pixels(self) -> int:
        return int(self.confusion.sum())

    def names(self) -> list[str]:
        if len(self.class_names) == self.num_classes:
            return list(self.class_names)
        return [f"class_{i}" for i in range(self.num_classes)]

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""

        def clean(v):
            v = float(v)
            return None if not np.isfinite(v) else v

        names = self.names()
        return {
            "mIoU": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "mean_accuracy": clean(self.mean_accuracy),
            "labeled_pixels": self.labeled_pixels,
            "per_class_iou": {n: clean(v) for n, v in zip(names, self.iou)},
            "per_class_accuracy": {n: clean(v) for n, v in zip(names, self.class_accuracy)},
            "class_names": names,
            "confusion_matrix": self.confusion.astype(np.int64).tolist(),
        }

    def table(self) -> str:
        """Human-readable per-class table plus the summary line."""
        names = self.names()
        width = max(10, *(len(n) for n in names))
        lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}"]
        for n, iou, acc in zip(names, self.iou, self.class_accuracy):
            f = lambda v: "    n/a" if not np.isfinite(v) else f"{100 * v:7.2f}"  # noqa: E731
            lines.append(f"{n:<{width}}  {f(iou)}  {f(acc)}")
        lines.append(
            f"mIoU {100 * self.miou:.2f}   pixel acc {100 * self.pixel_accuracy:.2f}   "
            f"mean acc {100 * self.mean_accuracy:.2f}   ({self.labeled_pixels} labelled pixels)"
        )
        return "\n".join(lines)


def save_confusion_png(path: str | Path, confusion: np.ndarray, class_names: Sequence[str], title: str = "") -> Path:
    """Row-normalised confusion matrix as a PNG (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    k = cm.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.nan_to_num(cm / cm.sum(1, keepdims=True))
    size = max(4.0, 0.45 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    names = list(class_names) if len(class_names) == k else [str(i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if k <= 25:  # numbers stay legible up to about this many classes
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix (rows normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
