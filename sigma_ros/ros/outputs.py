"""From a segmentation to the node's output images (arrays + encodings), and back to messages.

ROS-free apart from :func:`to_messages`, which builds rclpy messages through :mod:`sigma_ros.image_codec`. The node
and ``bench/bench_node_overhead.py`` share this code, so the benchmark measures what the node runs.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from sigma_ros.image_codec import numpy_to_image
from sigma_ros.postprocess import colorize, overlay


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
    """
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


def to_messages(outputs: Dict[str, Tuple[np.ndarray, str]], header: Any, msg_type: Any = None) -> Dict[str, Any]:
    """Output name -> sensor_msgs/Image carrying ``header`` (the RGB image's stamp and frame_id)."""
    return {name: numpy_to_image(arr, enc, header=header, msg_type=msg_type) for name, (arr, enc) in outputs.items()}
