"""Label maps to pictures: palettes, colour maps, overlays; logits to labels.

Each per-frame function has a numpy version (the CPU path: numba/numpy beat torch there) and a ``*_tensor`` version
in torch that runs where its tensors are (the GPU path: nothing but the results crosses to the host). Both give the
same bytes.
"""
from __future__ import annotations

import numpy as np
import torch


def voc_palette(n: int) -> np.ndarray:
    """The PASCAL-VOC colour map (bit-interleaved class index), which Sigma uses for its visualisations."""
    ids = np.arange(n, dtype=np.int64)
    palette = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):  # bits 3s, 3s+1, 3s+2 of the id light bit (7 - s) of R, G, B
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    return palette.astype(np.uint8)


def palette_lut(palette: np.ndarray) -> np.ndarray:
    """The colour table :func:`colorize` indexes: the palette, then black up to id 255 (e.g. 255 = ignore)."""
    lut = np.zeros((max(256, len(palette)), 3), dtype=np.uint8)
    lut[: len(palette)] = palette
    return lut


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB. Ids beyond the palette (e.g. 255 = ignore) are drawn black."""
    return np.take(palette_lut(palette), labels, axis=0)  # ~4x faster than fancy indexing


def colorize_tensor(labels: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """:func:`colorize` in torch: (H, W) int64 ids and a :func:`palette_lut` table on the same device."""
    return lut[labels]


def overlay(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            color: np.ndarray | None = None) -> np.ndarray:
    """Blend the class colours over an RGB image: (1 - alpha) * rgb + alpha * color, rounded, uint8.

    Pass ``color`` (from :func:`colorize`) when it is computed anyway, to skip a second colour lookup.
    """
    if rgb.shape[:2] != np.shape(labels):
        raise ValueError(f"image {rgb.shape[:2]} and labels {np.shape(labels)} differ in size")
    color = colorize(labels, palette) if color is None else color
    return _blend(rgb.astype(np.uint16), color.astype(np.uint16), alpha).astype(np.uint8)


def overlay_tensor(rgb: torch.Tensor, color: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """:func:`overlay` in torch: (H, W, 3) uint8 image and colours (from :func:`colorize_tensor`), same rounding."""
    if rgb.shape != color.shape:
        raise ValueError(f"image {tuple(rgb.shape)} and colours {tuple(color.shape)} differ in size")
    return _blend(rgb.int(), color.int(), alpha).to(torch.uint8)  # int32: torch has no uint16 arithmetic


def _blend(rgb, color, alpha: float):
    """(1 - alpha) * rgb + alpha * color in 8-bit fixed point, rounded; on widened numpy arrays or tensors alike."""
    a = int(round(float(np.clip(alpha, 0.0, 1.0)) * 256))
    return (rgb * (256 - a) + color * a + 128) >> 8


def labels_from_scores(scores: np.ndarray, confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, H, W) float32 logits -> (H, W) int64 argmax over K and, optionally, the max softmax probability.

    One pass per pixel in a numba kernel: on the CPU this is ~15x faster than torch's reduction over the
    channel-first layout, which matters in the node's per-frame path.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    k, h, w = scores.shape
    labels = np.empty((h, w), np.int64)
    conf = np.empty((h, w) if confidence else (0, 0), np.float32)
    _argmax_kernel()(scores, labels, conf, confidence)
    return labels, (conf if confidence else None)


def labels_from_scores_tensor(scores: torch.Tensor, confidence: bool = False
                              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`labels_from_scores` in torch, on the scores' device: (K, H, W) -> (H, W) int64 [, float32].

    Ties go to the first maximal class, as in the kernel (torch's documented max/argmax rule). The confidence,
    1 / sum_k exp(s_k - max), is accumulated in float64 like the kernel's. (NaN logits differ: the kernel skips
    them, torch returns them as the maximum.)
    """
    best, labels = scores.max(dim=0)
    if not confidence:
        return labels, None
    total = (scores - best).exp_().sum(dim=0, dtype=torch.float64)
    return labels, total.reciprocal_().float()


_kernel = None


def _argmax_kernel():
    global _kernel
    if _kernel is None:
        import math

        import numba

        # Serial on purpose: numba's workqueue threading layer aborts on concurrent parallel launches from two
        # threads, and at ~1 ms per 640x480 frame there is little to gain.
        @numba.njit(cache=True)
        def argmax_channels(scores, labels, conf, want_conf):
            k, h, w = scores.shape
            for i in range(h):
                for j in range(w):
                    best = scores[0, i, j]
                    arg = 0
                    for c in range(1, k):
                        v = scores[c, i, j]
                        if v > best:
                            best = v
                            arg = c
                    labels[i, j] = arg
                    if want_conf:
                        total = 0.0
                        for c in range(k):
                            total += math.exp(scores[c, i, j] - best)
                        conf[i, j] = 1.0 / total

        _kernel = argmax_channels
    return _kernel
