"""Evaluation: single scale, the official multi-scale + flip scheme, and sliding-window inference.

Follows the official ``engine/evaluator.py`` (anatomy §6.3):

* per forward pass the score is ``exp(logits)``; with flip it is ``exp(logits + flip(logits(flipped input)))``
  (the two logit maps are added *before* the exp);
* with a crop size, a scaled image whose height or width is <= the crop is run in one pass, zero-padded
  (symmetrically, in normalised space) up to the crop where smaller; otherwise a sliding window with stride
  ceil(2/3 crop) sums the scores of overlapping windows;
* each scale's score map is resized (bilinear) to the original size and the maps are summed; argmax gives the
  labels. We accumulate in float64 so exp cannot overflow where the official fp32 code would.

One deliberate deviation: the official sliding loop mixes up row/column strides and crop sides for non-square
crops (``s_x = grid_xidx * stride[0]``); we use rows for rows and columns for columns.
Without scales/flip/crop this reduces to one forward pass and argmax of the logits.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .augment import pad_to
from .metrics import SegMetrics, confusion_matrix


@dataclass
class EvalOptions:
    scales: Sequence[float] = (1.0,)
    flip: bool = False
    crop: tuple[int, int] | None = None  # (h, w): enables official crop/pad + sliding-window logic
    stride_rate: float = 2.0 / 3.0
    amp_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 under autocast on GPU

    @property
    def plain(self) -> bool:
        return tuple(self.scales) == (1.0,) and not self.flip and self.crop is None


def _autocast(device: torch.device, dtype):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def _forward(model: nn.Module, rgb: torch.Tensor, x: torch.Tensor, amp_dtype) -> torch.Tensor:
    with _autocast(rgb.device, amp_dtype):
        out = model(rgb, x)
    return out.float()


def _pass_score(model, rgb, x, flip: bool, amp_dtype) -> torch.Tensor:
    """exp-score (B,K,h,w) of one pass, float64, with the official flip combination."""
    logits = _forward(model, rgb, x, amp_dtype)
    if flip:
        logits = logits + _forward(model, rgb.flip(-1), x.flip(-1), amp_dtype).flip(-1)
    return logits.double().exp()


def _crop_score(model, rgb, x, crop, opts: EvalOptions) -> torch.Tensor:
    """Score of one (scaled) image with the official crop logic; returns (B,K,h,w) at the input size."""
    h, w = rgb.shape[-2:]
    ch, cw = crop
    if h <= ch or w <= cw:
        # One pass; pad (symmetrically) up to the crop where the image is smaller, then cut the margins off.
        top, left = max(ch - h, 0) // 2, max(cw - w, 0) // 2
        score = _pass_score(model, pad_to(rgb, crop, 0.0), pad_to(x, crop, 0.0), opts.flip, opts.amp_dtype)
        return score[..., top:top + h, left:left + w]
    sh, sw = int(math.ceil(ch * opts.stride_rate)), int(math.ceil(cw * opts.stride_rate))
    rows = int(math.ceil((h - ch) / sh)) + 1
    cols = int(math.ceil((w - cw) / sw)) + 1
    total = None
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh + ch, h), min(c * sw + cw, w)
            y0, x0 = y1 - ch, x1 - cw
            s = _pass_score(model, rgb[..., y0:y1, x0:x1], x[..., y0:y1, x0:x1], opts.flip, opts.amp_dtype)
            if total is None:
                total = torch.zeros((*s.shape[:2], h, w), dtype=s.dtype, device=s.device)
            total[..., y0:y1, x0:x1] += s
    return total


@torch.no_grad()
def predict_scores(model: nn.Module, rgb: torch.Tensor, x: torch.Tensor, opts: EvalOptions) -> torch.Tensor:
    """Summed exp-scores (B,K,H,W) float64 of a batch of normalised (B,3,H,W) inputs."""
    h, w = rgb.shape[-2:]
    total = None
    for s in opts.scales:
        if s != 1.0:
            size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
            r = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
            xx = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        else:
            r, xx = rgb, x
        if opts.crop is not None:
            score = _crop_score(model, r, xx, opts.crop, opts)
        else:
            score = _pass_score(model, r, xx, opts.flip, opts.amp_dtype)
        if score.shape[-2:] != (h, w):
            score = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)
        total = score if total is None else total + score
    return total


@torch.no_grad()
def predict_labels(model: nn.Module, rgb: torch.Tensor, x: torch.Tensor, opts: EvalOptions | None = None):
    """(B,H,W) int64 labels for a batch of normalised inputs."""
    opts = opts or EvalOptions()
    if opts.plain:  # argmax of the logits equals argmax of exp(logits): skip the float64 work
        return _forward(model, rgb, x, opts.amp_dtype).argmax(1)
    return predict_scores(model, rgb, x, opts).argmax(1)


@dataclass
class EvalResult:
    metrics: SegMetrics
    seconds: float
    images: int
    options: dict = field(default_factory=dict)


@torch.no_grad()
def evaluate(model: nn.Module, samples, num_classes: int, device: torch.device | str = "cpu",
             opts: EvalOptions | None = None, class_names: Sequence[str] = (), progress: bool = False,
             desc: str = "eval") -> EvalResult:
    """Confusion matrix over ``samples`` (an iterable of (rgb (3,H,W), x (3,H,W), label (H,W), name)).

    The model must already be on ``device`` and in eval mode. Returns an EvalResult whose ``confusion`` is a
    numpy int64 array (summed over the samples this process saw).
    """
    opts = opts or EvalOptions()
    device = torch.device(device)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    it = samples
    if progress:
        from tqdm import tqdm

        it = tqdm(samples, desc=desc, unit="img", leave=False, dynamic_ncols=True)
    t0, n = time.perf_counter(), 0
    for rgb, x, label, _name in it:
        rgb, x = rgb.to(device)[None], x.to(device)[None]
        pred = predict_labels(model, rgb, x, opts)[0]
        conf += confusion_matrix(pred, label.to(device), num_classes)
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    metrics = SegMetrics(conf.cpu().numpy(), list(class_names))
    return EvalResult(metrics, time.perf_counter() - t0, n,
                      {"scales": list(opts.scales), "flip": opts.flip,
                       "crop": list(opts.crop) if opts.crop else None})
