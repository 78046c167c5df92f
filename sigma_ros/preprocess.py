"""Images to network inputs: the preprocessing profiles.

``official`` reproduces the authors' data path exactly, so their released checkpoints see what they were trained on:
- their RGB reaches the network in **BGR** order (``cv2.imread(path, cv2.COLOR_BGR2RGB)`` passes a conversion code as
  the read flag, so nothing is converted);
- X is read as one grey channel and replicated x3; a 16-bit X becomes 8-bit as OpenCV's grey read does (v >> 8);
  a colour X becomes grey with OpenCV's BGR->grey weights;
- both are scaled to [0, 1] and normalised with ImageNet mean/std **by channel index** (channel 0 of the BGR image
  gets the R statistics; the three equal X channels get three different values).
``rgb`` is the profile of models trained by this project: the same, but RGB stays in RGB order (what ROS cameras
publish) and 16-bit or float depth is mapped linearly from ``depth_range`` metres instead of truncated.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

PROFILES = ("official", "rgb")
MODALITIES = ("thermal", "depth")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown preprocessing profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return profile


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's colour->grey conversion (fixed-point BT.601 weights) on an RGB-ordered uint8 image."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14).astype(np.uint8)


def x_to_uint8(x: np.ndarray, profile: str = "rgb", modality: str = "thermal",
               depth_range: tuple[float, float] = (0.0, 10.0)) -> np.ndarray:
    """One 8-bit grey channel from whatever the X camera gives.

    uint8 (H, W) as is; (H, W, 3|4) colour -> grey; uint16 -> v >> 8 (official, and thermal in any profile) or, for
    depth in millimetres under the ``rgb`` profile, metres mapped from ``depth_range``; float -> metres mapped from
    ``depth_range`` with NaN/inf (invalid depth) as 0.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        if x.dtype != np.uint8 or x.shape[2] not in (3, 4):
            raise ValueError(f"a multi-channel X image must be uint8 with 3 or 4 channels, got {x.dtype} {x.shape}")
        return rgb_to_grey(x[..., :3])
    if x.ndim != 2:
        raise ValueError(f"X image must be (H, W) or (H, W, 3), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.uint16:
        if profile == "official" or modality == "thermal":
            return (x >> 8).astype(np.uint8)
        return _range_to_uint8(x.astype(np.float32) / 1000.0, depth_range)
    if np.issubdtype(x.dtype, np.floating):
        return _range_to_uint8(x.astype(np.float32), depth_range)
    raise ValueError(f"unsupported X image dtype {x.dtype}")


def _range_to_uint8(v: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"depth_range must be (min, max) with max > min, got {value_range}")
    valid = np.isfinite(v) & (v > 0)
    scaled = np.clip((np.where(valid, v, lo) - lo) * (255.0 / (hi - lo)), 0, 255)
    return np.where(valid, np.rint(scaled), 0).astype(np.uint8)


def preprocess_pair(rgb: np.ndarray, x: np.ndarray, profile: str = "rgb", modality: str = "thermal",
                    depth_range: tuple[float, float] = (0.0, 10.0), size: tuple[int, int] | None = None,
                    device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 RGB + any X image -> two normalised float32 tensors (3, H, W) (or (3, h, w) for size=(w, h)).

    X of another resolution is resized to the RGB image's. Normalisation runs on ``device`` (upload uint8 first:
    4x less to copy).
    """
    check_profile(profile)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"RGB image must be (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    grey = x_to_uint8(x, profile, modality, depth_range)
    rgb_t = _as_tensor(rgb).to(device).permute(2, 0, 1).float().div_(255)
    x_t = _as_tensor(grey).to(device)[None].float().div_(255)
    h, w = rgb.shape[:2]
    target = (h, w) if size is None else (int(size[1]), int(size[0]))
    if profile == "official":
        rgb_t = rgb_t.flip(0)  # the network was trained on BGR
    rgb_t = _resize(rgb_t, target)
    x_t = _resize(x_t, target).expand(3, -1, -1)
    return _normalise(rgb_t), _normalise(x_t)


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    """Zero-copy where possible; read-only arrays (Pillow, ROS message buffers) are copied, not aliased."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]


@functools.lru_cache(maxsize=None)
def _stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean/std as (3, 1, 1) tensors, made once per device (not a host-to-GPU copy per frame)."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1))


def _normalise(t: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(t.device)
    return (t - mean) / std
