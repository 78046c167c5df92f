"""From a segmentation to the node's output images (arrays + encodings), and back to messages.

ROS-free apart from :func:`to_messages`, which builds rclpy messages through :mod:`sigma_ros.image_codec`. The node
and ``bench/bench_node_overhead.py`` share this code, so the benchmark measures what the node runs.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from sigma_ros.image_codec import numpy_to_image
from sigma_ros.postprocess import colorize, colorize_tensor, overlay, overlay_tensor, palette_lut


def label_encoding(num_classes: int) -> str:
    """mono8 while every class id fits a byte (<= 256 classes), else 16UC1."""
    if num_classes > 65536:
        raise ValueError(f"{num_classes} classes do not fit a 16-bit label image")
    return "mono8" if num_classes <= 256 else "16UC1"


def render_outputs(
    labels: np.ndarray,
    rgb: np.ndarray,
    palette: np.ndarray,
    *,
    alpha: float,
    num_classes: int,
    want_color: bool,
    want_overlay: bool,
    confidence: Optional[np.ndarray] = None,
) -> Dict[str, Tuple[np.ndarray, str]]:
    """Output name -> (array, encoding). ``label`` always; ``color``/``overlay``/``confidence`` when asked for.

    labels: (H, W) integer class ids at the RGB size; rgb: (H, W, 3) uint8 RGB; palette: (K, 3) uint8.
    labels, rgb and confidence are numpy arrays, or tensors on one device (``Segmenter.segment_on_device``): then
    the pictures are drawn there and only the finished outputs are copied back (the same bytes).
    """
    if isinstance(labels, torch.Tensor):
        return _render_tensors(labels, rgb, palette, alpha=alpha, num_classes=num_classes, want_color=want_color,
                               want_overlay=want_overlay, confidence=confidence)
    encoding = label_encoding(num_classes)
    out: Dict[str, Tuple[np.ndarray, str]] = {
        "label": (labels.astype(np.uint8 if encoding == "mono8" else np.uint16, copy=False), encoding)
    }
    if want_color:
        out["color"] = (colorize(labels, palette), "rgb8")
    if want_overlay:
        color = out["color"][0] if want_color else None
        out["overlay"] = (overlay(rgb, labels, palette, alpha=alpha, color=color), "rgb8")
    if confidence is not None:
        out["confidence"] = (np.asarray(confidence, dtype=np.float32), "32FC1")
    return out


@torch.inference_mode()
def _render_tensors(labels: torch.Tensor, rgb: torch.Tensor, palette: np.ndarray, *, alpha: float, num_classes: int,
                    want_color: bool, want_overlay: bool, confidence: Optional[torch.Tensor]
                    ) -> Dict[str, Tuple[np.ndarray, str]]:
    encoding = label_encoding(num_classes)
    # 16UC1 travels as int16 (same bits; torch before 2.3 has no uint16) and is viewed as uint16 on the host
    out = {"label": (labels.to(torch.uint8 if encoding == "mono8" else torch.int16), encoding)}
    if want_color or want_overlay:
        color = colorize_tensor(labels, _device_lut(palette_lut(palette).tobytes(), labels.device))
        if want_color:
            out["color"] = (color, "rgb8")
        if want_overlay:
            out["overlay"] = (overlay_tensor(torch.as_tensor(rgb, device=labels.device), color, alpha), "rgb8")
    if confidence is not None:
        out["confidence"] = (confidence.float(), "32FC1")
    host = _to_host({name: t for name, (t, _) in out.items()})
    if encoding != "mono8":
        host["label"] = host["label"].view(np.uint16)
    return {name: (host[name], enc) for name, (_, enc) in out.items()}


@functools.lru_cache(maxsize=16)
def _device_lut(lut_bytes: bytes, device: torch.device) -> torch.Tensor:
    """A palette table on the device, made once (not a host-to-device copy per frame)."""
    return torch.frombuffer(bytearray(lut_bytes), dtype=torch.uint8).view(-1, 3).to(device)


def _to_host(tensors: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """Tensors -> numpy arrays. From a GPU: non-blocking copies into pinned memory and a single wait for all of them
    (each ``.cpu()`` would wait on its own); the arrays keep their pinned blocks alive."""
    device = next(iter(tensors.values())).device
    if device.type != "cuda":
        return {name: t.numpy() for name, t in tensors.items()}
    host = {name: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for name, t in tensors.items()}
    for name, t in tensors.items():
        host[name].copy_(t, non_blocking=True)
    torch.cuda.current_stream(device).synchronize()
    return {name: h.numpy() for name, h in host.items()}


def to_messages(outputs: Dict[str, Tuple[np.ndarray, str]], header: Any, msg_type: Any = None) -> Dict[str, Any]:
    """Output name -> sensor_msgs/Image carrying ``header`` (the RGB image's stamp and frame_id)."""
    return {name: numpy_to_image(arr, enc, header=header, msg_type=msg_type) for name, (arr, enc) in outputs.items()}
