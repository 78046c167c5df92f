"""The node's parameters: one table (name, default, description, constraints) and its validation.

ROS-free: the node turns :data:`PARAMETERS` into rclpy ``ParameterDescriptor``s, reads the values back and calls
:func:`validate`, which returns a typed :class:`NodeSettings` or raises :class:`SettingsError` naming the parameter,
the bad value and what is allowed. Keeping it here lets the rules be tested without a ROS graph and lets the README
table be generated from the same source.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

VARIANTS = ("micro", "tiny", "small", "base")
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
MODALITIES = ("thermal", "depth")


class SettingsError(ValueError):
    """A parameter value is invalid; the message names the parameter and what is allowed."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: Tuple[str, ...] = ()
    float_range: Optional[Tuple[float, float]] = None  # inclusive, enforced by rclpy too
    int_range: Optional[Tuple[int, int]] = None
    read_only: bool = True  # changing these needs a restart (model, device, subscriptions)


PARAMETERS: List[ParamSpec] = [
    ParamSpec("checkpoint", "", "Path to a checkpoint written by sigma_ros save_checkpoint, or an official Sigma "
              "checkpoint (then give 'variant' and a class 'config'). Required."),
    ParamSpec("variant", "", "Expected Sigma size (micro|tiny|small|base) or empty. The loader infers the architecture "
              "from the checkpoint; a non-empty variant is checked against it and start-up fails on a mismatch.",
              choices=("",) + VARIANTS),
    ParamSpec("config", "", "Class config: a built-in name (mfnet, pst900, nyu, sunrgbd) or a YAML path (e.g. one of "
              "the package's config/*.yaml). Empty: class names and palette from the checkpoint."),
    ParamSpec("device", "auto", "auto (cuda when available, else cpu with a warning) | cuda (fail when absent) | cpu.",
              choices=DEVICES),
    ParamSpec("precision", "auto", "Inference precision: auto (bf16 on a GPU, fp32 on the CPU) | fp32 | fp16 | bf16.",
              choices=PRECISIONS),
    ParamSpec("input_size", "native", "'native' (infer at the RGB image size) or 'WxH' (e.g. 640x480): resize to "
              "this size for inference; outputs are always at the RGB image size."),
    ParamSpec("overlay_alpha", 0.5, "Weight of the class colour in ~/overlay (0 = RGB only, 1 = colour only). "
              "Can be changed at run time.", float_range=(0.0, 1.0), read_only=False),
    ParamSpec("sync.slop", 0.05, "Approximate-time pairing: largest stamp difference (s) between an RGB and an X "
              "image of one pair.", float_range=(0.0, 10.0)),
    ParamSpec("sync.queue_size", 10, "Approximate-time pairing: messages kept per topic while waiting for a partner.",
              int_range=(1, 1000)),
    ParamSpec("modality", "", "What x/image carries: thermal (8/16-bit) | depth (32FC1 metres or 16UC1 millimetres). "
              "Empty: the class config's modality (thermal without a config).", choices=("",) + MODALITIES),
    ParamSpec("depth_range", [0.0, 10.0], "Depth clipping range [min, max] in metres, used when modality=depth."),
    ParamSpec("fast_path", True, "Use the GPU speed path of the segmenter (CUDA graphs, reduced precision around an "
              "fp32 scan state) when running on CUDA; false = plain eager PyTorch."),
    ParamSpec("compile", False, "GPU fast path only: also torch.compile the model. With the fused Triton kernels it "
              "no longer pays off (Sigma-T 9.8 against 9.5 ms on an H100) and the first frame of each input size "
              "waits minutes for compilation; kept for GPUs where the kernels cannot run."),
    ParamSpec("cpu_threads", 0, "PyTorch intra-op threads for CPU work (0 = PyTorch's default, one per core). "
              "Lower it when other nodes need the CPU: oversubscribed cores slow PyTorch down a lot.",
              int_range=(0, 1024)),
    ParamSpec("publish_confidence", False, "Also compute ~/confidence (32FC1 max softmax probability) while it has "
              "subscribers."),
    ParamSpec("debug.inference_delay", 0.0, "Testing aid: extra seconds slept after each inference, to emulate a slow "
              "model (used by the bounded-latency test). Leave at 0.", float_range=(0.0, 10.0)),
]

SPECS: Dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}


@dataclass(frozen=True)
class NodeSettings:
    checkpoint: str
    variant: str
    config: str
    device: str
    precision: str
    input_size: Optional[Tuple[int, int]]  # (W, H) or None for native
    overlay_alpha: float
    slop: float
    queue_size: int
    modality: str  # '' = from the class config (resolved by the node)
    depth_range: Tuple[float, float]
    fast_path: bool
    compile: bool
    cpu_threads: int
    publish_confidence: bool
    inference_delay: float


_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_input_size(text: str) -> Optional[Tuple[int, int]]:
    """'native' -> None; 'WxH' -> (W, H) with positive W, H."""
    if str(text).strip().lower() in ("native", ""):
        return None
    m = _SIZE_RE.match(str(text))
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise SettingsError(f"parameter 'input_size' must be 'native' or 'WxH' with positive integers "
                            f"(e.g. '640x480'), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _choice(values: Dict[str, Any], name: str) -> str:
    value = str(values[name]).strip().lower()
    allowed = SPECS[name].choices
    if value not in allowed:
        shown = "|".join(c if c else "''" for c in allowed)
        raise SettingsError(f"parameter '{name}' must be one of {shown}, got {values[name]!r}")
    return value


def _in_range(values: Dict[str, Any], name: str) -> float:
    value = values[name]
    lo, hi = SPECS[name].float_range or SPECS[name].int_range
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (lo <= value <= hi):
        raise SettingsError(f"parameter '{name}' must be a number in [{lo}, {hi}], got {value!r}")
    return value


def parse_depth_range(value: Sequence[float]) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise SettingsError(f"parameter 'depth_range' must be [min, max] in metres, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi):
        raise SettingsError(f"parameter 'depth_range' must satisfy 0 <= min < max (finite metres), got {value!r}")
    return lo, hi


def validate(values: Dict[str, Any]) -> NodeSettings:
    """Check every parameter value (dict keyed by the names in :data:`PARAMETERS`) and return typed settings."""
    missing = [p.name for p in PARAMETERS if p.name not in values]
    if missing:
        raise SettingsError(f"missing parameters: {', '.join(missing)}")
    checkpoint = str(values["checkpoint"]).strip()
    if not checkpoint:
        raise SettingsError("parameter 'checkpoint' is required: set it to a .pt written by sigma_ros "
                            "(e.g. --ros-args -p checkpoint:=/path/to/model.pt)")
    return NodeSettings(
        checkpoint=checkpoint,
        variant=_choice(values, "variant"),
        config=str(values["config"]).strip(),
        device=_choice(values, "device"),
        precision=_choice(values, "precision"),
        input_size=parse_input_size(values["input_size"]),
        overlay_alpha=float(_in_range(values, "overlay_alpha")),
        slop=float(_in_range(values, "sync.slop")),
        queue_size=int(_in_range(values, "sync.queue_size")),
        modality=_choice(values, "modality"),
        depth_range=parse_depth_range(values["depth_range"]),
        fast_path=bool(values["fast_path"]),
        compile=bool(values["compile"]),
        cpu_threads=int(_in_range(values, "cpu_threads")),
        publish_confidence=bool(values["publish_confidence"]),
        inference_delay=float(_in_range(values, "debug.inference_delay")),
    )


def defaults() -> Dict[str, Any]:
    """Parameter name -> default value (copies of lists)."""
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default) for p in PARAMETERS}
