"""Segmenter: a checkpoint turned into ``labels = seg(rgb, x)``. The node, segment-bag, pseudo-label and the demo all
run inference through this one class (and so through the same preprocessing and model code).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .classes import ClassConfig, generic_classes, load_class_config
from .model import CheckpointError, SigmaConfig, load_checkpoint
from .ops.selective_scan import describe_backend
from .postprocess import labels_from_scores, labels_from_scores_tensor
from .preprocess import MODALITIES, check_profile, check_rgb, check_x, pair_inputs, upload

log = logging.getLogger(__name__)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Segmentation:
    labels: np.ndarray  # (H, W) int64 class ids at the RGB image's size
    confidence: np.ndarray | None = None  # (H, W) float32 max softmax probability


@dataclass
class DeviceSegmentation:
    """One frame's results left on the Segmenter's device, to be drawn there (``ros.outputs.render_outputs``)."""

    labels: torch.Tensor  # (H, W) int64 class ids at the RGB image's size
    rgb: torch.Tensor  # (H, W, 3) uint8: the RGB image as uploaded (for the overlay)
    confidence: torch.Tensor | None = None  # (H, W) float32


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if present, else cpu (with a warning); 'cuda' without a GPU is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning("device=auto: no CUDA device found, running on the CPU (slow)")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but CUDA is not available (torch {torch.__version__}, "
                           f"built with CUDA {torch.version.cuda})")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


class Segmenter:
    def __init__(self, model: torch.nn.Module, config: SigmaConfig, *, class_names=None, palette=None,
                 preprocessing: str = "rgb", device: str = "auto", precision: str = "fp32",
                 input_size: tuple[int, int] | None = None, modality: str = "thermal",
                 depth_range: tuple[float, float] = (0.0, 10.0), fast: bool = True, compile: bool = False,
                 checkpoint_path: str | None = None):
        if precision not in PRECISIONS and precision != "auto":
            raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        if input_size is not None and (min(input_size) < 32):
            raise ValueError(f"input_size must be at least 32x32, got {input_size}")
        self.device = resolve_device(device)
        if precision == "auto":  # bf16 on GPUs: the fast path's speed, labels within 0.1 % of fp32 (bench/RESULTS.md)
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp16" and self.device.type == "cpu":
            log.warning("precision=fp16 is not supported on the CPU; using fp32")
            precision = "fp32"
        self.config = config
        self.num_classes = config.num_classes
        generic = generic_classes(config.num_classes)
        self.class_names = list(class_names) if class_names is not None else generic.class_names
        self.palette = np.asarray(palette, np.uint8) if palette is not None else generic.palette
        self.preprocessing = check_profile(preprocessing)
        self.precision = precision
        self.input_size = tuple(input_size) if input_size is not None else None
        self.modality = modality
        self.depth_range = tuple(depth_range)
        self.checkpoint_path = checkpoint_path
        self.checkpoint_extra: dict = {}  # what the trainer recorded (set by from_checkpoint)
        self.model = model.eval().to(self.device)
        self.fast = fast and self.device.type == "cuda"
        self.compile = compile and self.fast
        self._forward = self._build_forward()
        log.info("Sigma-%s (%d classes) on %s, %s, scan backend: %s", config.variant, self.num_classes,
                 self.device, precision, self.scan_description())

    @classmethod
    def from_checkpoint(cls, path, *, variant: str | None = None, class_config: ClassConfig | str | None = None,
                        modality: str | None = None, depth_range: tuple[float, float] | None = None,
                        **kw) -> "Segmenter":
        """Load a checkpoint. Official checkpoints carry no class names: pass ``class_config`` (e.g. 'mfnet').

        ``modality`` / ``depth_range`` default to what the checkpoint records (``sigma-ros train`` stores them in
        ``extra``), or for an official checkpoint to the class config's modality; explicit arguments win.
        """
        classes = load_class_config(class_config) if class_config is not None else None
        ck = load_checkpoint(path, variant=variant, num_classes=classes.num_classes if classes else None)
        names = classes.class_names if classes else ck.class_names
        palette = classes.palette if classes else ck.palette
        if names is not None and len(names) != ck.config.num_classes:
            raise CheckpointError(f"{path}: {len(names)} class names for {ck.config.num_classes} model classes")
        extra = ck.extra or {}
        if ck.official:
            preprocessing = "official"
            recorded = classes.modality if classes else None
        else:
            preprocessing = ck.preprocessing or "rgb"
            recorded = extra.get("modality")
        seg = cls(ck.model, ck.config, class_names=names, palette=palette, preprocessing=preprocessing,
                  modality=modality or recorded or "thermal",
                  depth_range=tuple(depth_range or extra.get("depth_range") or (0.0, 10.0)),
                  checkpoint_path=str(path), **kw)
        seg.checkpoint_extra = extra
        return seg

    # ---------------------------------------------------------------------------------------------------------------
    def _build_forward(self):
        """The model call for this device and precision (the GPU fast path plugs in here)."""
        dtype = PRECISIONS[self.precision]
        if self.fast:
            from .model.fast import build_fast_forward  # GPU-only speed path

            return build_fast_forward(self.model, dtype, compile=self.compile)

        def forward(rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            low = dtype != torch.float32
            with torch.autocast(self.device.type, dtype=dtype, enabled=low), \
                    torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=low):
                return self.model(rgb, x).float()

        return forward

    @property
    def draws_on_device(self) -> bool:
        """Whether the node keeps a frame on the device up to the finished outputs (:meth:`segment_on_device`):
        on a GPU that saves copying logits back; on the CPU the numba/numpy path is the faster one."""
        return self.device.type == "cuda"

    def upload(self, rgb: np.ndarray, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The camera images onto the device as they are (uint8/16-bit/float: converted there by :meth:`inputs`)."""
        return upload(check_rgb(rgb), self.device), upload(check_x(x), self.device)

    def inputs(self, rgb: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Uploaded images -> normalised network inputs (3, h, w) each, on the device (this model's profile)."""
        return pair_inputs(rgb, x, self.preprocessing, self.modality, self.depth_range, self.input_size)

    def preprocess(self, rgb: np.ndarray, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs(*self.upload(rgb, x))

    @torch.inference_mode()
    def logits(self, rgb_t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, h, w) tensors -> float32 logits (B, K, h, w)."""
        return self._forward(rgb_t.to(self.device), x_t.to(self.device))

    @torch.inference_mode()
    def segment_batch(self, rgbs, xs, confidence: bool = False) -> list[Segmentation]:
        pairs = [self.preprocess(r, x) for r, x in zip(rgbs, xs)]
        logits = self.logits(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))
        return [self.postprocess(lg, rgb.shape[:2], confidence) for rgb, lg in zip(rgbs, logits)]

    def postprocess(self, logits: torch.Tensor, size: tuple[int, int], confidence: bool = False) -> Segmentation:
        """(K, h, w) logits -> labels (and confidence) at ``size`` = the camera image's (H, W)."""
        if logits.device.type == "cpu":
            return Segmentation(*labels_from_scores(_at_size(logits, size).numpy(), confidence))
        labels, conf = self.labels_on_device(logits, size, confidence)  # reduce there, copy back only (H, W)
        return Segmentation(labels.cpu().numpy(), None if conf is None else conf.cpu().numpy())

    @torch.inference_mode()
    def labels_on_device(self, logits: torch.Tensor, size: tuple[int, int], confidence: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`postprocess` with the results left on the logits' device (torch; labels_from_scores_tensor)."""
        return labels_from_scores_tensor(_at_size(logits, size), confidence)

    def __call__(self, rgb: np.ndarray, x: np.ndarray, confidence: bool = False) -> Segmentation:
        return self.segment_batch([rgb], [x], confidence)[0]

    @torch.inference_mode()
    def segment_on_device(self, rgb: np.ndarray, x: np.ndarray, confidence: bool = False) -> DeviceSegmentation:
        """``self(rgb, x)`` with everything left on the device, nothing waited for (the node's GPU path: the
        outputs are drawn there and copied back together)."""
        rgb_u8, x_dev = self.upload(rgb, x)
        logits = self.logits(*(t[None] for t in self.inputs(rgb_u8, x_dev)))[0]
        labels, conf = self.labels_on_device(logits, rgb_u8.shape[:2], confidence)
        return DeviceSegmentation(labels, rgb_u8, conf)

    def scan_description(self) -> str:
        """The scan kernel inference uses: the fused Triton kernel on the GPU fast path, else the backend's."""
        backend = describe_backend(self.device)
        if self.fast:
            from .model.fast import use_fused_scans

            if use_fused_scans():
                return f"fused Triton kernel (sigma_ros.ops.triton_scan); {backend} where gradients are needed"
        return backend

    def describe(self) -> dict:
        """What the node reports in its diagnostics."""
        return {
            "model": f"Sigma-{self.config.variant} ({self.num_classes} classes)",
            "checkpoint": self.checkpoint_path or "(in memory)",
            "device": str(self.device) + (f" ({torch.cuda.get_device_name(self.device)})"
                                          if self.device.type == "cuda" else ""),
            "precision": self.precision,
            "preprocessing": self.preprocessing,
            "scan_backend": self.scan_description(),
            "fast_path": str(self.fast) + (" (compiled)" if self.compile else ""),
        }


def _at_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) scores at the camera image's (H, W) (the model ran at input_size: bilinear, as the labels' geometry)."""
    if logits.shape[-2:] == tuple(size):
        return logits
    return F.interpolate(logits[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
