"""Training augmentation of the official Sigma recipe (``TrainPre``), on normalised tensors.

Random horizontal flip, random scale, then a random crop that is padded where the scaled image is smaller than
the crop: pad value 0 for the (already normalised) images and 255 (ignore) for the label, like the official code.
Every random draw comes from a ``numpy.random.Generator`` that the caller derives from (seed, epoch, sample index),
so a sample's augmentation does not depend on worker processes, batch layout or when a run was resumed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
# The official config's scale set {0.5, 0.75, ..., 1.75}.
OFFICIAL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def scale_choices(scale_range: tuple[float, float] = (0.5, 1.75), scale_step: float = 0.25) -> tuple[float, ...] | None:
    """Discrete scales in ``scale_range`` spaced by ``scale_step``; None means draw continuously (step 0)."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale range must satisfy 0 < low <= high, got {scale_range}")
    if scale_step <= 0:
        return None
    n = int(np.floor((hi - lo) / scale_step + 1e-6)) + 1
    return tuple(round(lo + i * scale_step, 6) for i in range(n))


def resize_pair(rgb: torch.Tensor, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear resize of two (C,H,W) float tensors to ``size`` = (h, w)."""
    both = torch.cat([rgb, x], 0)[None]
    out = F.interpolate(both, size=size, mode="bilinear", align_corners=False)[0]
    return out[: rgb.shape[0]], out[rgb.shape[0]:]


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an (H,W) integer label."""
    out = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0]
    return out.to(label.dtype)


def pad_to(t: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """Pad the last two dims up to ``size``, split evenly on both sides (the official ``pad_image_to_shape``)."""
    h, w = t.shape[-2:]
    dh, dw = max(size[0] - h, 0), max(size[1] - w, 0)
    if dh == 0 and dw == 0:
        return t
    top, left = dh // 2, dw // 2
    return F.pad(t, (left, dw - left, top, dh - top), value=value)


def augment(
    rgb: torch.Tensor,
    x: torch.Tensor,
    label: torch.Tensor,
    rng: np.random.Generator,
    crop: tuple[int, int],
    scales: tuple[float, ...] | None = OFFICIAL_SCALES,
    scale_range: tuple[float, float] = (0.5, 1.75),
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flip, scale, crop/pad one sample. rgb, x: (3,H,W) float (normalised); label: (H,W) int64.

    ``scales`` is the discrete set to draw from; None draws uniformly from ``scale_range``.
    Returns tensors of exactly ``crop`` = (h, w).
    """
    if flip and rng.random() < 0.5:
        rgb, x, label = rgb.flip(-1), x.flip(-1), label.flip(-1)
    s = float(rng.choice(scales)) if scales else float(rng.uniform(*scale_range))
    h, w = label.shape
    size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
    if size != (h, w):
        rgb, x = resize_pair(rgb, x, size)
        label = resize_label(label, size)
    # Random crop where the image is larger than the crop, then pad where it is smaller.
    ch, cw = crop
    top = int(rng.integers(0, size[0] - ch + 1)) if size[0] > ch else 0
    left = int(rng.integers(0, size[1] - cw + 1)) if size[1] > cw else 0
    sl = (..., slice(top, top + ch), slice(left, left + cw))
    rgb, x, label = rgb[sl], x[sl], label[sl]
    rgb, x = pad_to(rgb, crop, 0.0), pad_to(x, crop, 0.0)
    label = pad_to(label, crop, IGNORE_INDEX)
    return rgb.contiguous(), x.contiguous(), label.contiguous()


def blank_modality(rgb: torch.Tensor, x: torch.Tensor, blank: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace one modality by zeros (the normalised mean image) for modality ablations. blank: None|'x'|'rgb'."""
    if blank in (None, "", "none"):
        return rgb, x
    if blank == "x":
        return rgb, torch.zeros_like(x)
    if blank == "rgb":
        return torch.zeros_like(rgb), x
    raise ValueError(f"blank must be 'x', 'rgb' or None, got {blank!r}")
