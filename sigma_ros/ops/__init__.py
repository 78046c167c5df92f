"""Compute kernels: the selective scan and its backends (see :mod:`sigma_ros.ops.selective_scan`), and the fused
Triton kernels of the GPU fast path, one module each: the multi-direction scan (:mod:`~sigma_ros.ops.triton_scan`),
its step sizes (:mod:`~sigma_ros.ops.triton_delta`), LayerNorm (:mod:`~sigma_ros.ops.triton_norm`), depthwise
conv + SiLU (:mod:`~sigma_ros.ops.triton_dwconv`), bilinear x2 up-sampling + norm
(:mod:`~sigma_ros.ops.triton_upsample`), mean/max pooling (:mod:`~sigma_ros.ops.triton_pool`) and the channel
gates' MLP (:mod:`~sigma_ros.ops.triton_gate`)."""
from __future__ import annotations

from .selective_scan import (
    BACKENDS,
    ENV_VAR,
    a_from_log,
    available_backends,
    describe_backend,
    resolve_backend,
    selective_scan,
    selective_scan_reference,
)

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "a_from_log",
    "available_backends",
    "describe_backend",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
]
