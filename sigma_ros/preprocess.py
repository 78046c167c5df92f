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
import sys

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
    return grey_tensor(_as_tensor(np.asarray(rgb))).numpy()


def x_to_uint8(x: np.ndarray, profile: str = "rgb", modality: str = "thermal",
               depth_range: tuple[float, float] = (0.0, 10.0)) -> np.ndarray:
    """One 8-bit grey channel from whatever the X camera gives.

    uint8 (H, W) as is; (H, W, 3|4) colour -> grey; uint16 -> v >> 8 (official, and thermal in any profile) or, for
    depth in millimetres under the ``rgb`` profile, metres mapped from ``depth_range``; float -> metres mapped from
    ``depth_range`` with NaN/inf (invalid depth) as 0.
    """
    x = check_x(x)
    return x_to_uint8_tensor(_as_tensor(x), profile, modality, depth_range).numpy()


def check_x(x) -> np.ndarray:
    """Raise ValueError for an X image no profile reads; the rules are :func:`x_to_uint8`'s."""
    x = np.asarray(x)
    if x.ndim == 3:
        if x.dtype != np.uint8 or x.shape[2] not in (3, 4):
            raise ValueError(f"a multi-channel X image must be uint8 with 3 or 4 channels, got {x.dtype} {x.shape}")
    elif x.ndim != 2:
        raise ValueError(f"X image must be (H, W) or (H, W, 3), got shape {x.shape}")
    elif not (x.dtype in (np.uint8, np.uint16) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"unsupported X image dtype {x.dtype}")
    return x


# ---------------------------------------------------------------------------------------------------------------------
# The conversions proper, in torch so that they run where the image is (CPU or GPU) with the same results. Every step
# is exact (integer maths, table look-ups, IEEE float ops without a reciprocal), so a GPU gives the CPU's bytes.
# 16-bit pixels travel as int16 tensors holding the uint16 bits (torch before 2.3 has no uint16).

def grey_tensor(rgb: torch.Tensor) -> torch.Tensor:
    """(H, W, 3|4) uint8 RGB(A) tensor -> (H, W) uint8 grey, OpenCV's fixed-point BT.601 weights."""
    r, g, b = (rgb[..., i].int() for i in range(3))
    return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14).to(torch.uint8)


def x_to_uint8_tensor(x: torch.Tensor, profile: str = "rgb", modality: str = "thermal",
                      depth_range: tuple[float, float] = (0.0, 10.0)) -> torch.Tensor:
    """:func:`x_to_uint8` on a tensor (from :func:`upload`: 16-bit pixels as int16 bits) on any device."""
    if x.ndim == 3:
        return grey_tensor(x)
    if x.dtype == torch.uint8:
        return x
    if x.dtype in _SIXTEEN_BIT:
        if profile == "official" or modality == "thermal":  # v >> 8 is the high byte: a strided view, no maths
            return x.view(torch.uint8)[..., _HIGH_BYTE::2]
        mm = x.view(torch.int16).int() & 0xFFFF
        return _range_to_uint8(mm.float() / _constant(1000.0, x.device), depth_range)
    return _range_to_uint8(x.float(), depth_range)


_SIXTEEN_BIT = tuple(d for d in (torch.int16, getattr(torch, "uint16", None)) if d is not None)
_HIGH_BYTE = 1 if sys.byteorder == "little" else 0


def _range_to_uint8(v: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"depth_range must be (min, max) with max > min, got {value_range}")
    valid = torch.isfinite(v) & (v > 0)
    scaled = ((v - lo) * (255.0 / (hi - lo))).clamp_(0, 255).round_()  # round: half to even, as np.rint
    return torch.where(valid, scaled, 0.0).to(torch.uint8)  # invalid (NaN, inf, <= 0) -> 0


@functools.lru_cache(maxsize=None)
def _constant(value: float, device: torch.device) -> torch.Tensor:
    """A float32 scalar on the device: dividing by a Python number makes CUDA multiply by its (rounded) reciprocal,
    dividing by a device tensor is an exact IEEE division, as on the CPU."""
    return torch.tensor(value, dtype=torch.float32, device=device)


def check_rgb(rgb) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"RGB image must be (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    return rgb


def upload(a: np.ndarray, device=None) -> torch.Tensor:
    """numpy image -> tensor on ``device`` as it is (uint8 stays uint8: a quarter of the bytes of float32).

    To a GPU through pinned memory with a non-blocking copy, so the host does not wait for the transfer (the caching
    host allocator keeps the pinned block until the copy is done). On the CPU a zero-copy view where possible.
    """
    t = _as_tensor(a)
    device = torch.device(device) if device is not None else t.device
    if device.type != "cuda":
        return t.to(device)
    staging = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    staging.copy_(t)
    return staging.to(device, non_blocking=True)


def preprocess_pair(rgb: np.ndarray, x: np.ndarray, profile: str = "rgb", modality: str = "thermal",
                    depth_range: tuple[float, float] = (0.0, 10.0), size: tuple[int, int] | None = None,
                    device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 RGB + any X image -> two normalised float32 tensors (3, H, W) (or (3, h, w) for size=(w, h)).

    X of another resolution is resized to the RGB image's. The images are uploaded to ``device`` as they are and
    converted there (:func:`pair_inputs`).
    """
    check_profile(profile)
    rgb, x = check_rgb(rgb), check_x(x)
    return pair_inputs(upload(rgb, device), upload(x, device), profile, modality, depth_range, size)


def pair_inputs(rgb: torch.Tensor, x: torch.Tensor, profile: str = "rgb", modality: str = "thermal",
                depth_range: tuple[float, float] = (0.0, 10.0), size: tuple[int, int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`preprocess_pair` on images already uploaded (:func:`upload`), on their device."""
    check_profile(profile)
    h, w = rgb.shape[:2]
    target = (h, w) if size is None else (int(size[1]), int(size[0]))
    rgb_idx = rgb.permute(2, 0, 1)
    if profile == "official":
        rgb_idx = rgb_idx.flip(0)  # the network was trained on BGR
    grey = x_to_uint8_tensor(x, profile, modality, depth_range)[None]
    return _normalised(rgb_idx, target), _normalised(grey, target)


def _normalised(idx: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) uint8 (C = 3, or 1 for X: replicated x3) -> (3, h, w) float32 (v / 255 - mean[c]) / std[c].

    At the network's size: a look-up in a table computed on the CPU (one gather, the same bits on any device).
    Otherwise bilinear interpolation runs between the /255 and the normalisation.
    """
    if tuple(idx.shape[-2:]) == tuple(size):
        flat = idx.to(torch.long, memory_format=torch.contiguous_format).view(idx.shape[0], -1)
        return _table(idx.device).gather(1, flat.expand(3, -1)).view(3, *size)
    scaled = idx.float().div_(_constant(255.0, idx.device))
    scaled = F.interpolate(scaled[None], size=size, mode="bilinear", align_corners=False)[0].expand(3, -1, -1)
    return _normalise(scaled)


@functools.lru_cache(maxsize=None)
def _table(device: torch.device) -> torch.Tensor:
    """(3, 256): uint8 value -> normalised input of each channel, made once per device."""
    unit = torch.arange(256, dtype=torch.float32).div_(255)
    return _normalise(unit.expand(3, 1, 256))[:, 0].contiguous().to(device)


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    """Zero-copy where possible; read-only arrays (Pillow, ROS message buffers) are copied, not aliased. uint16 becomes
    int16 with the same bits (see above)."""
    a = np.ascontiguousarray(a)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype == np.uint16:
        a = a.view(np.int16)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


@functools.lru_cache(maxsize=None)
def _stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean/std as (3, 1, 1) tensors, made once per device (not a host-to-GPU copy per frame)."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1))


def _normalise(t: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(t.device)
    return (t - mean) / std
