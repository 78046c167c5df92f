"""GPU inference fast path: reduced precision around an fp32 scan state, replayed as CUDA graphs.

At batch 1 the eager model is launch-bound (about 2,000 small kernels per frame): capturing the whole forward once
per input shape and replaying it removes the launch overhead. The graph owns static input/output buffers; callers
get a copy of the output.

It runs a private copy of the model (:func:`inference_copy`: matmul weights already in the compute dtype, scan
constants precomputed). When Triton is available the blocks take their fused paths: one scan kernel per call
(``ops.triton_scan``: reversed and column-order directions read in place, a reversed direction's output kept apart
from its twin's and added by the norm that reads them), LayerNorms that write the dtype their consumer needs
(``ops.triton_norm``; SS2D's merge and gate inside),
the depthwise conv + SiLU, the decoder's up-sampling + norm and its pooling (``ops.triton_dwconv``,
``ops.triton_upsample``, ``ops.triton_pool``). Each stage's fusion blocks run on a side stream while the encoder
goes on (``concurrent=False``: all on one stream). ``fused_scan=False`` keeps mamba-ssm's kernel on flipped copies and
torch's ops around it, as does forcing a scan backend with SIGMA_SCAN_BACKEND.

``compile=True`` additionally runs the model through ``torch.compile`` with the scan as an opaque custom op.
With the fused kernels it no longer pays off (bench/RESULTS.md); it stays for GPUs where they cannot run.
"""
from __future__ import annotations

import copy
import logging
import os

import torch
from torch import nn

from ..ops import triton_scan
from ..ops.selective_scan import ENV_VAR
from ..ops.selective_scan import selective_scan as ops_selective_scan
from .sigma import concurrent_fusion, fused_norms, fused_scans, low_precision_scan_inputs, scan_implementation

log = logging.getLogger(__name__)


@torch.library.custom_op("sigma_ros::selective_scan_fwd", mutates_args=())
def _scan_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              D: torch.Tensor, delta_bias: torch.Tensor, delta_softplus: bool) -> torch.Tensor:
    """Inference-only scan as one op torch.compile can keep in its graph (the kernel itself is not traceable)."""
    return ops_selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=delta_softplus)


@_scan_fwd.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus):
    return u.new_empty(u.shape)  # the kernels return a contiguous tensor of u's dtype


def _scan_as_op(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend=None):
    return _scan_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus)


def use_fused_scans() -> bool:
    """The fast path's default: the fused Triton scan when Triton imports, unless SIGMA_SCAN_BACKEND forces a
    backend (one switch for every scan kernel)."""
    forced = os.environ.get(ENV_VAR, "").strip().lower() not in ("", "auto")
    return triton_scan.triton_available() and not forced


def _fails(fn, *args) -> bool:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - any failure of the fused path means: fall back
        return True
    return False


def inference_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A private copy of the model as the fast path runs it, weights as they are now.

    - Linear and convolution weights (and convolution biases) are stored in ``dtype``: under autocast every matmul
      would otherwise cast its float32 weight again on every forward (about 370 small kernels a Sigma-T frame,
      replayed inside the CUDA graph too).
    - Modules with a ``freeze`` method compute the constants their fused path derives from the parameters once
      (A = -exp(A_log) in the kernel's layout, the merged scan projections, the head as a matrix padded to aligned
      rows).
    Everything else (LayerNorms, A_log, D, dt biases, scales) stays float32, as autocast keeps it. The caller's
    model is left untouched, so fp32, bf16 and fp16 fast paths can be built from one model.
    """
    private = copy.deepcopy(model).eval()
    for m in private.modules():
        if hasattr(m, "freeze"):
            m.freeze(dtype)
        if dtype != torch.float32 and isinstance(m, (nn.Linear, nn.Conv2d)):
            m.weight.data = m.weight.data.to(dtype)
            if isinstance(m, nn.Conv2d) and m.bias is not None:  # a Linear's bias may be read as float32 (dt bias)
                m.bias.data = m.bias.data.to(dtype)
    return private


def build_fast_forward(model: torch.nn.Module, dtype: torch.dtype, warmup: int = 3, compile: bool = False,
                       fused_scan: bool | None = None, concurrent: bool = True):
    """``forward(rgb, x) -> logits`` (float32) on the fast path; ``fused_scan=None`` uses the Triton scan if present.
    It runs a private copy of the model (:func:`inference_copy`): later changes to ``model``'s weights do not reach
    it; build a new forward after loading others."""
    graphs: dict[tuple, tuple] = {}
    model = inference_copy(model, dtype)
    low = dtype != torch.float32
    scan = _scan_as_op if compile else ops_selective_scan
    fused = use_fused_scans() if fused_scan is None else fused_scan
    log.info("fast path: %s, scans: %s", dtype, "fused Triton kernel" if fused else "selective-scan backend on copies")

    def run(rgb, x):
        # cuDNN convolutions default to TF32 (~1e-3 error); fp32 means fp32 here, so the golden parity holds.
        with torch.autocast("cuda", dtype=dtype, enabled=low), low_precision_scan_inputs(low), \
                torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=low), \
                scan_implementation(scan), fused_scans(fused), fused_norms(fused), concurrent_fusion(concurrent):
            return model(rgb, x).float()

    eager = torch.compile(run, dynamic=False, fullgraph=False) if compile else run

    def capture(rgb, x):
        static_rgb, static_x = rgb.clone(), x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: lazy inits, autotuning and compilation stay out of the capture
            for _ in range(warmup):
                eager(static_rgb, static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = eager(static_rgb, static_x)
        return graph, static_rgb, static_x, static_out

    def forward(rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        nonlocal fused
        key = (tuple(rgb.shape), rgb.device)
        if key not in graphs:
            try:
                graphs[key] = capture(rgb, x)
                log.info("captured a CUDA graph for input %s", tuple(rgb.shape))
            except Exception as e:  # a kernel that cannot be captured: stay correct, just slower
                if fused and _fails(eager, rgb, x):  # e.g. a Triton too old for the kernel: use the other scans
                    log.warning("the fused Triton scan failed (%s); using the selective-scan backend instead", e)
                    fused = False
                    return forward(rgb, x)
                log.warning("CUDA graph capture failed (%s); using eager execution for %s", e, tuple(rgb.shape))
                graphs[key] = None
        entry = graphs[key]
        if entry is None:
            return eager(rgb, x)
        graph, static_rgb, static_x, static_out = entry
        static_rgb.copy_(rgb)
        static_x.copy_(x)
        graph.replay()
        return static_out.clone()

    return forward
