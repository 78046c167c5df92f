"""Sigma: Siamese Mamba network for multi-modal semantic segmentation (Wan et al., 2024).

One file for the model family, in the spirit of timm. Module and parameter names reproduce the authors' state-dict
keys exactly (``backbone.vssm...``, ``backbone.cross_mamba.i...``, ``backbone.channel_attn_mamba.i...``,
``decode_head...``), so their released checkpoints load with ``strict=True``. The math follows the official code
(see the anatomy notes): SS2D 4-direction scans in the encoder and decoder, CroMB (C exchanged between modalities),
ConMB (scan over the concatenated sequence, forward and reversed, cross-modal SE gating), and the channel-aware
Mamba decoder. Tensors between blocks are channels-last (B, H, W, C), as in the original.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.selective_scan import resolve_backend, scan_directions_cpu
from ..ops.selective_scan import selective_scan as ops_selective_scan
from .config import SigmaConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _switched(name: str, value):
    """Set the module-level switch ``name`` inside the block (how the fast path routes the model's scans)."""
    previous, globals()[name] = globals()[name], value
    try:
        yield
    finally:
        globals()[name] = previous


# The official code casts every scan input to float32. Under autocast the GPU fast path instead hands the kernel its
# bf16/fp16 inputs (it keeps the state and accumulation in fp32): half the scan's memory traffic, no cast kernels.
_scan_low_precision_inputs = False


def low_precision_scan_inputs(enabled: bool = True):
    return _switched("_scan_low_precision_inputs", enabled)


def _scan_input(t: torch.Tensor) -> torch.Tensor:
    return t if _scan_low_precision_inputs else t.float()


def selective_scan(*args, **kwargs) -> torch.Tensor:
    """The scan every block calls; looked up at call time so the fast path can route it (e.g. to a custom op)."""
    return _scan_impl(*args, **kwargs)


_scan_impl = ops_selective_scan


def scan_implementation(fn):
    """Route the model's scans through ``fn`` (same signature as ``ops.selective_scan``) inside the block."""
    return _switched("_scan_impl", fn)


# The GPU fast path switches inference scans to one Triton kernel per call (``ops.triton_scan``): it reads reversed
# directions in place and sums each sequence's directions itself, so no flipped copies are made.
_fused_scans = False


def fused_scans(enabled: bool = True):
    return _switched("_fused_scans", enabled)


def fused_scan_applies(x: torch.Tensor, d_state: int) -> bool:
    """Whether this block's scan goes to the fused kernel: the fast path asked for it, no gradients, a device and a
    state size the kernel takes. Blocks then lay their scan inputs out channels-last, which the kernel reads fastest."""
    if not _fused_scans or torch.is_grad_enabled():
        return False
    from ..ops import triton_scan

    return triton_scan.runs_on(x) and triton_scan.supports(d_state)


# Training can take the same kernel, with its backward (``ops.triton_scan_backward``): no flipped copies and no
# mamba-ssm backward, which was half of a compiled training step's GPU time.
_training_scans = False


def triton_training_scans(enabled: bool = True):
    return _switched("_training_scans", enabled)


def _triton_scan_trains(u: torch.Tensor, d_state: int) -> bool:
    if not _training_scans or not torch.is_grad_enabled():
        return False
    from ..ops import triton_scan

    return triton_scan.runs_on(u) and triton_scan.supports(d_state)


def _triton_head_trains(x: torch.Tensor) -> bool:
    """The same switch makes the decoder's last norm and its classifier one op (``ops.triton_head``), which keeps
    one full-resolution map for the backward instead of two."""
    if not _training_scans or not torch.is_grad_enabled():
        return False
    from ..ops import triton_head

    return triton_head.runs_on(x)


# No fusion block feeds the encoder: stage i's CroMB and ConMB only need the encoder's stage i, and the decoder only
# their results. So the fast path runs each stage's fusion on a side stream of its own while the encoder goes on: the
# kernels of one fill the GPU where the other's leave it idle (the deep stages' small maps, the launch gaps).
_concurrent_fusion = False


def concurrent_fusion(enabled: bool = True):
    return _switched("_concurrent_fusion", enabled)


def _concurrent_fusion_applies(x: torch.Tensor) -> bool:
    return _concurrent_fusion and x.is_cuda and not torch.is_grad_enabled() and not torch.compiler.is_compiling()


_side_streams: dict[tuple[int, int, int], torch.cuda.Stream] = {}


def _side_stream(device: torch.device, i: int) -> torch.cuda.Stream:
    """Side stream i of a device for the calling thread, made once. A CUDA graph captures work on it as a branch of
    its graph; one per thread, so that a capture in one thread (two nodes in one process, say) never takes in work
    another thread puts on the same stream."""
    key = (device.index if device.index is not None else torch.cuda.current_device(), threading.get_ident(), i)
    if key not in _side_streams:
        _side_streams[key] = torch.cuda.Stream(device=device)
    return _side_streams[key]


# ... and its LayerNorms to one Triton kernel each (``ops.triton_norm``, see :class:`LayerNorm`), as well as the
# decoder's up-sampling (with the norm that follows, ``ops.triton_upsample``) and pooling (``ops.triton_pool``).
_fused_norms = False


def fused_norms(enabled: bool = True):
    return _switched("_fused_norms", enabled)


def _fused_norms_apply() -> bool:
    """Whether those kernels run now: the fast path asked for them, no gradients, and torch.compile is not tracing
    (Inductor fuses these ops itself)."""
    return _fused_norms and not torch.is_grad_enabled() and not torch.compiler.is_compiling()


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and keys) that can add a second input and gate the result by SiLU:
    ``LN(x [+ other]) [* SiLU(gate)]``.

    On the fast path (``fused_norms``, inference) this is one Triton kernel (``ops.triton_norm``) that writes the
    dtype the consumer needs instead of float32 plus a cast: a gated norm the gate's dtype, one that ``feeds_matmul``
    (its output goes straight into a Linear or convolution, which autocast would cast) the autocast dtype, others
    float32, as autocast does. Everywhere else it is the plain float32 LayerNorm of the official code.
    """

    def __init__(self, dim: int, feeds_matmul: bool = False):
        super().__init__(dim)
        self.feeds_matmul = feeds_matmul

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None, gate: torch.Tensor | None = None,
                x_twin: torch.Tensor | None = None, other_twin: torch.Tensor | None = None) -> torch.Tensor:
        """LN((x + x_twin) + (other + other_twin)) * SiLU(gate); the twins are a scan's reversed directions, kept
        apart by the fused scan (``triton_scan.scan_directions(twins_apart=True)``)."""
        if _fused_norms_apply():
            from ..ops import triton_norm

            if triton_norm.runs_on(x):
                return triton_norm.layer_norm(x, self.weight, self.bias, self.eps, other, gate,
                                              self._out_dtype(x, gate), x_twin=x_twin, other_twin=other_twin)
        x = x if x_twin is None else x + x_twin
        other = other if other_twin is None else other + other_twin
        y = super().forward(x if other is None else x + other)
        return y if gate is None else y.to(gate.dtype) * F.silu(gate)

    def _out_dtype(self, x: torch.Tensor, gate: torch.Tensor | None) -> torch.dtype:
        if gate is not None:
            return gate.dtype
        if not torch.is_autocast_enabled(x.device.type):
            return x.dtype
        return torch.get_autocast_dtype(x.device.type) if self.feeds_matmul else torch.float32


def _cpu_scans_in_place(u: torch.Tensor) -> bool:
    """Inference with the model's own scan on the CPU (numba) backend, outside torch.compile."""
    return (_scan_impl is ops_selective_scan and not torch.is_grad_enabled() and u.device.type == "cpu"
            and not torch.compiler.is_compiling() and resolve_backend(u.device) == "cpu")


def scan_directions(u, delta, A, B, C, D, delta_bias, bidirectional: bool, channels_last: bool = False):
    """Scan each base sequence of u in its directions and sum the outputs per sequence.

    u (batch, G, dim, L); delta (batch, K, dim, L), B and C (batch, K, N, L) in base order; A (K*dim, N);
    D, delta_bias (K*dim,). K = G, or 2G when ``bidirectional`` (direction k >= G scans u[:, k - G] reversed).
    ``delta_bias`` None (fused kernel only): delta is the step size itself, bias and softplus already taken.
    Returns (batch, G, dim, L); stored (batch, G, L, dim) when ``channels_last`` and the fused kernel runs.
    """
    if fused_scan_applies(u, A.shape[1]):
        from ..ops import triton_scan

        return triton_scan.scan_directions_op(u, delta, A, B, C, D, delta_bias, bidirectional, channels_last)
    if _triton_scan_trains(u, A.shape[1]):
        from ..ops import triton_scan

        return triton_scan.scan_directions_train(*(_scan_input(t) for t in (u, delta)), A, _scan_input(B),
                                                 _scan_input(C), D, delta_bias, bidirectional, channels_last)
    b, g, d, seq_len = u.shape
    k = delta.shape[1]
    if bidirectional and _cpu_scans_in_place(u):  # the numba kernel reads reversed directions in place
        return scan_directions_cpu(u, delta, A, B, C, D, delta_bias).to(delta.dtype)  # as the generic path's
    if bidirectional:  # materialise the reversed directions for a one-direction kernel
        u = torch.cat([u, u.flip(-1)], dim=1)
        delta, B, C = (torch.cat([t[:, :g], t[:, g:].flip(-1)], dim=1) for t in (delta, B, C))
    ys = selective_scan(
        _scan_input(u.reshape(b, k * d, seq_len).to(delta.dtype)),  # under autocast delta is bf16, u may be fp32
        _scan_input(delta.reshape(b, k * d, seq_len)),
        A,
        _scan_input(B).contiguous(),  # grouped: direction k drives channels k*dim .. (k+1)*dim-1
        _scan_input(C).contiguous(),
        D,
        delta_bias=delta_bias,
        delta_softplus=True,
    ).view(b, k, d, seq_len)
    return ys[:, :g] + ys[:, g:].flip(-1) if bidirectional else ys


# --------------------------------------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------------------------------------
class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Permute(nn.Module):
    """Parameter-free layer; exists so ``patch_embed`` keeps the official indices (0: conv, 2: norm)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def _depthwise_conv(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=True)


def _conv_silu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """SiLU(depthwise conv(x)) of a channels-last map, (B, H, W, C) -> (B, H, W, C), for blocks on the fused path:
    one Triton kernel (``ops.triton_dwconv``) instead of cuDNN's convolution, bias add and a separate SiLU."""
    from ..ops import triton_dwconv

    if triton_dwconv.runs_on(x):
        return triton_dwconv.depthwise_conv3x3_silu(x, conv.weight, conv.bias)
    return F.silu(conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class SSMParams(nn.Module):
    """The selective-scan parameters of K scan directions, stacked as in VMamba's checkpoints.

    ``x_proj_weight`` (K, R+2N, D), ``dt_projs_weight`` (K, D, R), ``dt_projs_bias`` (K, D),
    ``A_logs`` (K*D, N) and ``Ds`` (K*D,). Subclasses add their layers around these.
    """

    def _init_ssm(self, k: int, d_inner: int, d_state: int, dt_rank: int):
        self.K, self.d_inner, self.d_state, self.dt_rank = k, d_inner, d_state, dt_rank
        bound = d_inner**-0.5  # nn.Linear's default init, as the official stacked Linears had
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        dt_w, dt_b = zip(*(_dt_init(dt_rank, d_inner) for _ in range(k)))
        self.dt_projs_weight = nn.Parameter(torch.stack(dt_w))
        self.dt_projs_bias = nn.Parameter(torch.stack(dt_b))
        self.A_logs = nn.Parameter(_a_log_init(d_state, d_inner).repeat(k, 1))
        self.Ds = nn.Parameter(torch.ones(k * d_inner))

    def _scan(self, u: torch.Tensor) -> torch.Tensor:
        """Scan G base sequences in K directions. u: (B, G, D, L) -> (B, G, D, L), summed over each one's directions.

        Direction k = r * G + g scans u[:, g], reversed when r = 1 (so K = 2G, or K = G: forwards only). The
        projections are per position, so they run on the base order; the scan reads reversed directions backwards
        (see :func:`scan_directions`).
        """
        b, g, d, seq_len = u.shape
        weight = self.x_proj_weight.view(self.K // g, g, -1, d)
        x_dbl = torch.einsum("bgdl,rgcd->brgcl", u, weight).reshape(b, self.K, -1, seq_len)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        return scan_directions(u, dts, -torch.exp(self.A_logs.float()), bs, cs, self.Ds.float(),
                               self.dt_projs_bias.reshape(-1).float(), bidirectional=self.K == 2 * g)

    def _scan_tokens(self, x: torch.Tensor, map_height: int = 0) -> torch.Tensor:
        """The fused kernel's path (inference, and training with ``triton_training_scans``): x (B, L, D) row-major
        tokens -> (B, G, L, D) float32 in training; in inference (B, K, L, D), each direction's output apart (map
        g + G the reversed twin of map g), for the norm that reads them to add.

        Every direction scans forwards and reversed. ConMB (G = 1): the token sequence. SS2D (G = 2, ``map_height``
        = H): the (H, L/H) map in row and in column order; the kernel reads the column order from the same row-major
        tensor and writes its result at row-major positions too. The projections of all K directions are two
        GEMMs over the tokens (x -> [dt rank rows | B, C rows], then the block-diagonal dt projection)."""
        from ..ops import triton_scan

        b, seq_len, d = x.shape
        k, r, n = self.K, self.dt_rank, self.d_state
        proj, dt_proj, a = self._fused_constants()
        p = F.linear(x.reshape(b * seq_len, d), proj)
        dt_low = p[:, :k * r]
        training = torch.is_grad_enabled()
        if training and not _scan_low_precision_inputs:  # training's default: fp32 scan inputs
            x, p = x.float(), p.float()  # (casting whole tensors keeps the views' layouts)
        bcs = p[:, k * r:k * (r + 2 * n)].view(b, seq_len, k, 2 * n).permute(0, 2, 3, 1)  # (B, K, 2N, L) view
        u = x.transpose(1, 2)[:, None].expand(b, 2 if map_height else 1, d, seq_len)
        bias = self.dt_projs_bias.reshape(-1).float()
        if training:  # delta recomputed from dt_low in the backward, not saved
            from ..ops import triton_scan_backward

            y = triton_scan_backward.scan_directions_train_projected(
                u, dt_low, dt_proj, a, bcs[:, :, :n], bcs[:, :, n:], self.Ds.float(), bias, True, map_height)
        else:
            dts, bias = _step_sizes(dt_low, dt_proj, bias, k)
            y = triton_scan.scan_directions_op(u, dts.view(b, seq_len, k, d).permute(0, 2, 3, 1),  # (B, K, D, L)
                                               a, bcs[:, :, :n], bcs[:, :, n:], self.Ds.float(), bias, True, True,
                                               map_height, twins_apart=True)
        return y.transpose(-1, -2)

    _frozen: tuple | None = None

    def _fused_constants(self, dtype: torch.dtype | None = None) -> tuple:
        """What the fused path derives from the parameters: the x projections of all K directions as one matrix
        ([dt rank rows of every direction; B, C rows of every direction; zero rows up to a multiple of 16], so each
        position's B/C rows start 16-byte aligned for vector loads), the dt projections as one block-diagonal
        matrix (K*D, K*R), and A = -exp(A_log) stored (N, K*D), as the kernel reads it. Per call, unless
        :meth:`freeze` computed them once."""
        if self._frozen is not None:
            return self._frozen
        k, r, d = self.K, self.dt_rank, self.d_inner
        w = self.x_proj_weight
        rows = torch.cat([w[:, :r].reshape(k * r, d), w[:, r:].reshape(-1, d)])
        proj = F.pad(rows, (0, 0, 0, -rows.shape[0] % 16))
        dt_proj = torch.block_diag(*self.dt_projs_weight)
        if dtype is not None:
            proj, dt_proj = proj.to(dtype), dt_proj.to(dtype)
        return proj, dt_proj, _kernel_a(self.A_logs)

    def freeze(self, dtype: torch.dtype):
        """Compute :meth:`_fused_constants` once, the matrices in ``dtype``. Only for a copy of the model whose
        parameters will not change again (the fast path's, see ``fast.inference_copy``)."""
        self._frozen = None
        with torch.no_grad():
            self._frozen = self._fused_constants(dtype)


def _step_sizes(dt_low: torch.Tensor, dt_proj: torch.Tensor, bias: torch.Tensor, directions: int
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused scan's delta (tokens, K * D) and the bias it still has to add: on the fast path the step sizes
    themselves from ``ops.triton_delta`` (bias and softplus taken there, once, so None), else the dt projection's
    GEMM, leaving bias and softplus to the scan. ``dt_proj`` is block-diagonal over the K directions."""
    from ..ops import triton_delta

    if triton_delta.runs_on(dt_low):
        return triton_delta.step_sizes(dt_low, dt_proj.to(dt_low.dtype), bias, directions).flatten(1), None
    return F.linear(dt_low, dt_proj), bias


def _kernel_a(a_log: torch.Tensor) -> torch.Tensor:
    """A = -exp(A_log), (K*D, N), stored transposed: the fused kernel reads it (N, K*D), so no copy per call."""
    return (-torch.exp(a_log.float())).t().contiguous().t()


def _dt_init(dt_rank: int, d_inner: int, dt_min=1e-3, dt_max=0.1, floor=1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's dt projection init: small uniform weights, bias = softplus^-1 of a log-uniform step size."""
    std = dt_rank**-0.5
    weight = torch.empty(d_inner, dt_rank).uniform_(-std, std)
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    bias = dt + torch.log(-torch.expm1(-dt))
    return weight, bias


def _linspace(end: float, n: int) -> list[float]:
    """torch.linspace(0, end, n) as floats (python, so models can be built on the meta device)."""
    return [float(v) for v in torch.linspace(0, end, n, device="cpu")]


def _a_log_init(d_state: int, d_inner: int) -> torch.Tensor:
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)


# --------------------------------------------------------------------------------------------------------------------
# SS2D (VMamba "v0" block op): 4-direction cross scan
# --------------------------------------------------------------------------------------------------------------------
class SS2D(SSMParams):
    def __init__(self, d_model: int, d_state: int = 16, ssm_ratio: float = 2.0):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = _depthwise_conv(d_inner)
        self._init_ssm(4, d_inner, d_state, math.ceil(d_model / 16))
        self.out_norm = LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, C)
        if fused_scan_applies(x, self.d_state):
            return self._forward_fused(x)
        # x and z from separate GEMMs: a chunk of one product would reach the conv as a strided view, which cuDNN
        # (eagerly and under torch.compile) copies to a contiguous one in the forward and again in the backward
        x, z = F.linear(x, self.in_proj.weight[:self.d_inner]), F.linear(x, self.in_proj.weight[self.d_inner:])
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        if _triton_scan_trains(x, self.d_state):  # the fused path's scan layout, with torch's ops around it
            b, d, h, w = x.shape
            ys = self._scan_tokens(x.permute(0, 2, 3, 1).reshape(b, h * w, d), map_height=h)
            rows, cols = ys[:, 0].view(b, h, w, d), ys[:, 1].view(b, h, w, d)
        else:
            rows, cols = self._cross_scan(x)
        return self.out_proj(self.out_norm(rows, other=cols, gate=z))  # LN(rows + cols) * SiLU(z)

    def _cross_scan(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scan row-major, column-major and both reversed. (B, D, H, W) -> the row-order and the column-order
        outputs (each already summed with its reversed twin) as (B, H, W, D) views, to be merged by the norm."""
        b, d, h, w = x.shape
        ys = self._scan(torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1))
        return ys[:, 0].view(b, d, h, w).permute(0, 2, 3, 1), ys[:, 1].view(b, d, w, h).permute(0, 3, 2, 1)

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The same math with no layout copies: x and z from one GEMM (the fused conv and norm read their strided
        halves in place), the conv and its SiLU in one kernel, one row-major token tensor scanned in all four
        directions, both orders' results merged and gated by the fused norm."""
        d = self.d_inner
        xz = self.in_proj(x)
        x, z = _conv_silu(self.conv2d, xz[..., :d]), xz[..., d:]
        b, h, w, _ = x.shape
        ys = self._scan_tokens(x.reshape(b, h * w, d), map_height=h)
        return self.out_proj(self.out_norm(**_maps(ys, b, h, w, d), gate=z))


def _maps(ys: torch.Tensor, b: int, h: int, w: int, d: int) -> dict:
    """SS2D's four scan outputs (B, 4, L, D) as the norm's arguments: the row order, the column order, and each one's
    reversed twin, as (B, H, W, D) maps."""
    row, column, row_twin, column_twin = (ys[:, i].view(b, h, w, d) for i in range(4))
    return dict(x=row, other=column, x_twin=row_twin, other_twin=column_twin)


class VSSBlock(nn.Module):
    def __init__(self, dim: int, d_state: int, ssm_ratio: float, drop_path: float):
        super().__init__()
        self.norm = LayerNorm(dim, feeds_matmul=True)
        self.op = SS2D(dim, d_state, ssm_ratio)
        self.drop_path = DropPath(drop_path)

    # What activation checkpointing recomputes: the residual branch, not the stochastic-depth mask (nothing random
    # is recomputed, so no RNG state has to be replayed; training.step.enable_activation_checkpointing).
    checkpointed_parts = ("branch",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.branch(x))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self.norm(x))


class PatchMerging2D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = LayerNorm(4 * dim, feeds_matmul=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class VMambaBackbone(nn.Module):
    """The shared (Siamese) encoder: patch embedding, 4 stages of VSS blocks, a LayerNorm on each stage output."""

    def __init__(self, cfg: SigmaConfig):
        super().__init__()
        dims = cfg.dims
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, dims[0], kernel_size=4, stride=4), Permute(0, 2, 3, 1), LayerNorm(dims[0])
        )
        rates = _linspace(cfg.drop_path_rate, sum(cfg.depths))
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            first = sum(cfg.depths[:i])
            stage = nn.Sequential()
            stage.add_module("blocks", nn.Sequential(*(
                VSSBlock(dims[i], cfg.d_state, cfg.ssm_ratio, rates[first + j]) for j in range(depth)
            )))
            stage.add_module("downsample", PatchMerging2D(dims[i]) if i < 3 else nn.Identity())
            self.layers.append(stage)
        for i in range(4):
            self.add_module(f"outnorm{i}", LayerNorm(dims[i]))
        self.apply(_vmamba_init)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> 4 channels-last maps (B, H/4/2^i, W/4/2^i, C_i), normalised."""
        return list(self.stages(x))

    def stages(self, x: torch.Tensor):
        """:meth:`forward`'s maps one at a time, each as soon as its stage is done."""
        x = self.patch_embed(x)
        for i, stage in enumerate(self.layers):
            x = stage.blocks(x)
            yield getattr(self, f"outnorm{i}")(x)
            x = stage.downsample(x)


def _vmamba_init(m: nn.Module):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------------------------
# Fusion: CroMB (cross selective scan, C exchanged) and ConMB (concatenated scan + cross-modal SE gating)
# --------------------------------------------------------------------------------------------------------------------
class CrossMambaSSM(nn.Module):
    """Two single-direction scans; each modality keeps its own u, dt, A, B, D and reads C from the other."""

    def __init__(self, d_model: int, d_state: int, ssm_ratio: float):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        self.dt_rank, self.d_state = math.ceil(d_model / 16), d_state
        # Registration order follows the official module (keeps state_dict order identical to the authors').
        self.x_proj_1 = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.x_proj_2 = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj_1, self.dt_proj_2 = (self._dt_proj(d_inner) for _ in range(2))
        self.A_log_1 = nn.Parameter(_a_log_init(d_state, d_inner))
        self.A_log_2 = nn.Parameter(_a_log_init(d_state, d_inner))
        self.D_1 = nn.Parameter(torch.ones(d_inner))
        self.D_2 = nn.Parameter(torch.ones(d_inner))
        self.out_norm_1 = LayerNorm(d_inner, feeds_matmul=True)
        self.out_norm_2 = LayerNorm(d_inner, feeds_matmul=True)

    def _dt_proj(self, d_inner: int) -> nn.Linear:
        dt_proj = nn.Linear(self.dt_rank, d_inner)
        dt_w, dt_b = _dt_init(self.dt_rank, d_inner)
        with torch.no_grad():
            dt_proj.weight.copy_(dt_w)
            dt_proj.bias.copy_(dt_b)
        return dt_proj

    def _project(self, u: torch.Tensor, i: int, fused: bool):
        """u (B, D, L) -> dt (B, D, L), B (B, N, L), C (B, N, L) of modality i, and the dt bias the scan still adds
        (None where ``fused``: dt is then the step size itself, see ``_step_sizes``)."""
        weight, u_t = getattr(self, f"x_proj_{i}").weight, u.transpose(1, 2)
        dt_proj = getattr(self, f"dt_proj_{i}")
        dt_low = F.linear(u_t, weight[:self.dt_rank])
        if fused:
            dt, bias = _step_sizes(dt_low.flatten(0, 1), dt_proj.weight, dt_proj.bias.float(), 1)
            dt = dt.view(u_t.shape)
        else:
            dt, bias = F.linear(dt_low, dt_proj.weight), dt_proj.bias.float()
        b, c = F.linear(u_t, weight[self.dt_rank:]).chunk(2, dim=-1)  # one aligned (B, L, 2N): vector loads
        return dt.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2), bias

    def forward(self, u_rgb: torch.Tensor, u_x: torch.Tensor):  # (B, D, L) each -> (B, L, D) each
        last = fused_scan_applies(u_rgb, self.d_state)
        dt_r, b_r, c_r, bias_r = self._project(u_rgb, 1, last)
        dt_x, b_x, c_x, bias_x = self._project(u_x, 2, last)
        a_r, a_x = self._kernel_as() if last else (-torch.exp(self.A_log_1.float()), -torch.exp(self.A_log_2.float()))
        y_r = scan_directions(u_rgb[:, None], dt_r[:, None], a_r, b_r[:, None], c_x[:, None], self.D_1.float(),
                              bias_r, False, last)[:, 0]
        y_x = scan_directions(u_x[:, None], dt_x[:, None], a_x, b_x[:, None], c_r[:, None], self.D_2.float(),
                              bias_x, False, last)[:, 0]
        return self.out_norm_1(y_r.transpose(1, 2)), self.out_norm_2(y_x.transpose(1, 2))

    _frozen: tuple | None = None

    def _kernel_as(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._frozen or (_kernel_a(self.A_log_1), _kernel_a(self.A_log_2))

    def freeze(self, dtype: torch.dtype):
        """Compute the fused kernel's A of both modalities once (see ``SSMParams.freeze``)."""
        self._frozen = None
        with torch.no_grad():
            self._frozen = self._kernel_as()


class CrossMambaFusion(nn.Module):
    """CroMB op: projections and the (shared) depthwise conv around :class:`CrossMambaSSM`."""

    def __init__(self, d_model: int, d_state: int, ssm_ratio: float):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        self.in_proj = nn.Linear(d_model, d_inner, bias=False)
        self.in_proj_modalx = nn.Linear(d_model, d_inner, bias=False)
        self.conv2d = _depthwise_conv(d_inner)  # one conv serves both modalities, as in the official code
        self.out_proj_rgb = nn.Linear(d_inner, d_model, bias=False)
        self.out_proj_e = nn.Linear(d_inner, d_model, bias=False)
        self.CMA_ssm = CrossMambaSSM(d_model, d_state, ssm_ratio)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor):  # (B, H, W, C) each
        b, h, w, _ = rgb.shape
        if fused_scan_applies(rgb, self.CMA_ssm.d_state):  # row-major (B, D, L) views of channels-last tokens
            u_r = _conv_silu(self.conv2d, self.in_proj(rgb)).flatten(1, 2).transpose(1, 2)
            u_x = _conv_silu(self.conv2d, self.in_proj_modalx(x)).flatten(1, 2).transpose(1, 2)
        else:
            u_r = F.silu(self.conv2d(self.in_proj(rgb).permute(0, 3, 1, 2))).flatten(2)  # row-major (B, D, L)
            u_x = F.silu(self.conv2d(self.in_proj_modalx(x).permute(0, 3, 1, 2))).flatten(2)
        y_r, y_x = self.CMA_ssm(u_r, u_x)
        return self.out_proj_rgb(y_r.reshape(b, h, w, -1)), self.out_proj_e(y_x.reshape(b, h, w, -1))


class CrossMambaFusionBlock(nn.Module):
    def __init__(self, dim: int, d_state: int, ssm_ratio: float):
        super().__init__()
        self.op = CrossMambaFusion(dim, d_state, ssm_ratio)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor):
        d_rgb, d_x = self.op(rgb, x)
        return rgb + d_rgb, x + d_x


class ConcatMambaFusion(SSMParams):
    """ConMB op: scan [RGB tokens ; X tokens] forward and reversed, then gate each half by the other's SE weights."""

    def __init__(self, d_model: int, d_state: int, ssm_ratio: float):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        self.in_proj = nn.Linear(d_model, d_inner, bias=False)
        self.in_proj_modalx = nn.Linear(d_model, d_inner, bias=False)
        self.conv2d = _depthwise_conv(d_inner)
        self.conv2d_modalx = _depthwise_conv(d_inner)
        self._init_ssm(2, d_inner, d_state, math.ceil(d_model / 16))
        self.out_norm1 = LayerNorm(d_inner)
        self.out_norm2 = LayerNorm(d_inner)
        self.out_proj = nn.Linear(2 * d_inner, d_model, bias=False)
        self.fc1 = _squeeze_excite(d_inner)
        self.fc2 = _squeeze_excite(d_inner)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = rgb.shape
        n = h * w
        p_r, p_x = self.in_proj(rgb), self.in_proj_modalx(x)  # (B, H, W, D), before the conv: feeds the SE gate
        if fused_scan_applies(rgb, self.d_state):  # the sequence stored (B, 2L, D), as the fused kernel reads fastest
            u_r, u_x = _conv_silu(self.conv2d, p_r), _conv_silu(self.conv2d_modalx, p_x)
            ys = self._scan_tokens(torch.cat([u_r.flatten(1, 2), u_x.flatten(1, 2)], dim=1))  # (B, 2, 2L, D)
            # each half as (B, H, W, D) maps: the forward scan's output and its reversed twin's, added by the norm
            (y_r, y_r_twin), (y_x, y_x_twin) = ((t[:, 0], t[:, 1]) for t in (ys[:, :, :n].unflatten(2, (h, w)),
                                                                             ys[:, :, n:].unflatten(2, (h, w))))
        else:
            u_r = F.silu(self.conv2d(p_r.permute(0, 3, 1, 2)))
            u_x = F.silu(self.conv2d_modalx(p_x.permute(0, 3, 1, 2)))
            seq = torch.cat([u_r.flatten(2), u_x.flatten(2)], dim=2)
            y = self._scan(seq[:, None])[:, 0]  # (B, D, 2L): forwards + reversed
            d = y.shape[1]
            y_r, y_x = y[..., :n].transpose(1, 2).reshape(b, h, w, d), y[..., n:].transpose(1, 2).reshape(b, h, w, d)
            y_r_twin = y_x_twin = None
        pooled_r, pooled_x = _mean_and_max(p_r), _mean_and_max(p_x)
        if pooled_r is not None:  # the fast path: each SE gate is one kernel on the mean, each gated norm another
            gate_r, gate_x = _mlp_gate(pooled_r[:, :1], self.fc1), _mlp_gate(pooled_x[:, :1], self.fc2)
            return self.out_proj(_gated_norms_side_by_side((self.out_norm1, y_r, gate_x, y_r_twin),
                                                           (self.out_norm2, y_x, gate_r, y_x_twin), dtype=rgb.dtype))
        gate_r, gate_x = self.fc1(p_r.mean(dim=(1, 2))), self.fc2(p_x.mean(dim=(1, 2)))
        y_r = self.out_norm1(y_r, x_twin=y_r_twin).to(rgb.dtype)
        y_x = self.out_norm2(y_x, x_twin=y_x_twin).to(x.dtype)
        return self.out_proj(torch.cat([y_r * gate_x[:, None, None, :], y_x * gate_r[:, None, None, :]], dim=-1))


def _gated_norms_side_by_side(*parts: tuple[LayerNorm, torch.Tensor, torch.Tensor, torch.Tensor | None],
                              dtype: torch.dtype) -> torch.Tensor:
    """cat([norm(x + x_twin) * gate for norm, x, gate, x_twin in parts], -1) for the fast path, in the dtype the
    next Linear takes (autocast's, else ``dtype``): each norm, its gate (B, C), the twin (the reversed scan's output,
    or None) and the rounding in one Triton kernel (``ops.triton_norm``) that writes its slice of the result, where
    the plain expression takes a sum, a norm, a product, a concatenation and a cast. The values are the same: float32
    norm times float32 gate, rounded once."""
    from ..ops import triton_norm

    x = parts[0][1]
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    out = x.new_empty(*x.shape[:-1], sum(p[1].shape[-1] for p in parts), dtype=dtype)
    start = 0
    for norm, x, gate, x_twin in parts:
        width = x.shape[-1]
        triton_norm.layer_norm(x, norm.weight, norm.bias, norm.eps, scale=gate, out=out[..., start:start + width],
                               x_twin=x_twin)
        start += width
    return out


def _squeeze_excite(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d // 16, bias=False), nn.SiLU(), nn.Linear(d // 16, d, bias=False), nn.Sigmoid())


class ConcatMambaFusionBlock(nn.Module):
    def __init__(self, dim: int, d_state: int, ssm_ratio: float):
        super().__init__()
        self.op = ConcatMambaFusion(dim, d_state, ssm_ratio)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return rgb + x + self.op(rgb, x)


class RGBXEncoder(nn.Module):
    """Siamese VMamba encoder plus CroMB and ConMB fusion at each of the 4 stages."""

    def __init__(self, cfg: SigmaConfig):
        super().__init__()
        self.vssm = VMambaBackbone(cfg)
        self.cross_mamba = nn.ModuleList(
            CrossMambaFusionBlock(d, cfg.fusion_d_state, cfg.ssm_ratio) for d in cfg.dims
        )
        self.channel_attn_mamba = nn.ModuleList(
            ConcatMambaFusionBlock(d, cfg.fusion_d_state, cfg.ssm_ratio) for d in cfg.dims
        )

    def forward(self, rgb: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        # Both modalities share every encoder weight: one pass over a batch of 2B is the same math as two passes.
        both = torch.cat([rgb, x], dim=0)
        if not _concurrent_fusion_applies(both):
            return [self._fuse(i, f) for i, f in enumerate(self.vssm.stages(both))]  # channels-last
        main = torch.cuda.current_stream(both.device)
        feats, fused, sides = [], [], []
        for i, f in enumerate(self.vssm.stages(both)):
            side = _side_stream(both.device, i)
            side.wait_stream(main)  # the stage's map is ready; the encoder goes on meanwhile
            with torch.cuda.stream(side):
                fused.append(self._fuse(i, f))
            feats.append(f)  # held until the join, so that main cannot reuse its memory while a side stream reads it
            sides.append(side)
        for side in sides:
            main.wait_stream(side)
        return fused

    def _fuse(self, i: int, f: torch.Tensor) -> torch.Tensor:
        """Stage i's CroMB then ConMB, on its map of both modalities (2B, H, W, C) -> (B, H, W, C)."""
        f_rgb, f_x = f.chunk(2, dim=0)
        f_rgb, f_x = self.cross_mamba[i](f_rgb, f_x)
        return self.channel_attn_mamba[i](f_rgb, f_x)


# --------------------------------------------------------------------------------------------------------------------
# Decoder: channel-aware Mamba decoder (CVSS blocks), additive skips, bias-free 1x1 head
# --------------------------------------------------------------------------------------------------------------------
def _fast_kernels_run_on(x: torch.Tensor) -> bool:
    """Whether the fast path's Triton kernels take this tensor (one rule for all of them, ``ops.triton_scan``)."""
    from ..ops import triton_scan

    return triton_scan.runs_on(x)


def _mean_and_max(x: torch.Tensor) -> torch.Tensor | None:
    """(B, 2, C) float32 mean and max over the pixels of a channels-last map in one Triton pass on the fast path
    (``ops.triton_pool``); None elsewhere (callers use torch's reductions)."""
    if _fused_norms_apply():
        from ..ops import triton_pool

        if triton_pool.runs_on(x):
            return triton_pool.mean_and_max(x)
    return None


def _mlp_gate(pooled: torch.Tensor, mlp: nn.Sequential, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """sigmoid(sum over the pooled vectors of mlp(p)) for a (B, P, C) float32 ``pooled`` from ``_mean_and_max``, in
    one Triton kernel (``ops.triton_gate``): ``mlp`` is [Linear or 1x1 conv, SiLU, Linear or 1x1 conv(, Sigmoid)],
    both without bias. (B, C) in ``dtype``."""
    from ..ops import triton_gate

    return triton_gate.channel_gate(pooled, mlp[0].weight, mlp[2].weight, dtype)


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, squeeze: int = 30):
        super().__init__()
        hidden = channels // squeeze
        self.fc = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.SiLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        gate = self.fused_gate(x)
        if gate is not None:
            return x * gate[:, :, None, None]
        # amax/mean over H, W equal the official adaptive pools and are much faster on GPUs
        attn = self.fc(x.mean(dim=(2, 3), keepdim=True)) + self.fc(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(attn)

    def fused_gate(self, x: torch.Tensor) -> torch.Tensor | None:
        """The fast path's gate (B, C) in x's dtype: both pools in one kernel, the MLP of both, their sum and the
        sigmoid in another. None elsewhere."""
        pooled = _mean_and_max(x.permute(0, 2, 3, 1))
        return _mlp_gate(pooled, self.fc, x.dtype) if pooled is not None else None


class ChannelAttentionBlock(nn.Module):
    def __init__(self, channels: int, compress: int = 3, squeeze: int = 30):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(channels, channels // compress, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(channels // compress, channels, 3, 1, 1),
            ChannelAttention(channels, squeeze),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class CVSSDecoderBlock(nn.Module):
    def __init__(self, dim: int, d_state: int, ssm_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = LayerNorm(dim, feeds_matmul=True)
        self.scale1 = nn.Parameter(torch.ones(dim))
        self.op = SS2D(dim, d_state, ssm_ratio)
        self.drop_path = DropPath(drop_path)
        self.conv_blk = ChannelAttentionBlock(dim)
        self.norm2 = LayerNorm(dim, feeds_matmul=True)
        self.scale2 = nn.Parameter(torch.ones(dim))

    checkpointed_parts = ("branch", "conv_branch")  # as VSSBlock's: the stochastic-depth mask stays outside

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        # y + x * scale as one addcmul: one pass over the map instead of a multiply and an add
        x = torch.addcmul(self.drop_path(self.branch(x)), x, self.scale1)
        if _fused_norms_apply() and _fast_kernels_run_on(x):
            return self._fused_conv_branch_residual(x)
        return torch.addcmul(self.conv_branch(x), x, self.scale2)

    def _fused_conv_branch_residual(self, x: torch.Tensor) -> torch.Tensor:
        """conv_branch(x) + x * scale2 on the fast path: the channel attention's gate is applied by the kernel that
        adds the residual (``ops.triton_gate.gated_residual``), one pass over the map instead of two."""
        from ..ops import triton_gate

        cab = self.conv_blk.cab
        y = cab[2](cab[1](cab[0](self.norm2(x).permute(0, 3, 1, 2))))  # the convolutions, (B, C, H, W)
        return triton_gate.gated_residual(y.permute(0, 2, 3, 1), cab[3].fused_gate(y), x, self.scale2)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self.norm1(x))

    def conv_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_blk(self.norm2(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchExpand(nn.Module):
    """x2 up-sampling by pixel shuffle of a Linear(C -> 2C): channel index (p1 * 2 + p2) * C/2 + c."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(x)
        b, h, w, c = x.shape
        x = x.view(b, h, w, 2, 2, c // 4).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c // 4)
        return self.norm(x)


def _upsample2x(x: torch.Tensor, norm: LayerNorm | None = None) -> torch.Tensor:
    """Bilinear x2 of a channels-last map (align_corners=False, as the official decoder), then ``norm`` if given.

    On the fast path one Triton kernel does both (``ops.triton_upsample``). Elsewhere the interpolation runs in the
    input's dtype: autocast would run it in float32, doubling the traffic of the two largest maps of the network for
    nothing (the kernel interpolates in float32 either way; only the stored result is rounded)."""
    if _fused_norms_apply():
        from ..ops import triton_upsample

        if triton_upsample.runs_on(x):
            if norm is None:
                return triton_upsample.upsample2x(x)
            return triton_upsample.upsample2x(x, norm.weight, norm.bias, norm.eps, norm._out_dtype(x, None))
    if torch.compiler.is_compiling() and torch.is_grad_enabled():
        x = _upsample2x_by_sums(x)
    else:
        autocast_off = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cuda", "cpu") \
            else contextlib.nullcontext()  # autocast rejects other device types (the FLOP counter's meta tensors)
        with autocast_off:
            x = F.interpolate(x.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear", align_corners=False)
        x = x.permute(0, 2, 3, 1)
    return x if norm is None else norm(x)


def _upsample2x_by_sums(x: torch.Tensor) -> torch.Tensor:
    """``_upsample2x``'s interpolation as sums of shifted copies, for training under torch.compile: Inductor lowers
    the interpolation's backward to an atomic scatter-add, which took 13 ms of a 297 ms compiled Sigma-T step on the
    H100 (the full-resolution one, fused with the norm's backward, 10 ms); the backward of these sums is sums again.
    Along each axis output 2i is 3/4 of input i plus 1/4 of input i-1, output 2i+1 is 3/4 of i plus 1/4 of i+1, the
    edge pixel standing in for the missing neighbour: align_corners=False at scale 2. In float32 (at least) and
    rounded once, as the interpolation computes."""
    y = x.to(torch.promote_types(x.dtype, torch.float32))
    for dim in (1, 2):
        n = y.shape[dim]
        before = torch.cat([y.narrow(dim, 0, 1), y.narrow(dim, 0, n - 1)], dim)
        after = torch.cat([y.narrow(dim, 1, n - 1), y.narrow(dim, n - 1, 1)], dim)
        y = torch.stack([0.75 * y + 0.25 * before, 0.75 * y + 0.25 * after], dim + 1).flatten(dim, dim + 1)
    return y.to(x.dtype)


class UpsampleExpand(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim // 2, bias=False)
        self.norm = LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample2x(self.linear(x), self.norm)


class FinalUpsampleX4(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim, bias=False)
        self.linear2 = nn.Linear(dim, dim, bias=False)
        self.norm = LayerNorm(dim, feeds_matmul=True)  # into the 1x1 output conv

    def forward(self, x: torch.Tensor, normalise: bool = True) -> torch.Tensor:
        return _upsample2x(self.linear2(_upsample2x(self.linear1(x))), self.norm if normalise else None)


class MambaUp(nn.Module):
    def __init__(self, dim: int, depth: int, d_state: int, ssm_ratio: float, rates: list[float], upsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(CVSSDecoderBlock(dim, d_state, ssm_ratio, r) for r in rates[:depth])
        self.upsample = UpsampleExpand(dim) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.upsample(x) if self.upsample is not None else x


class MambaDecoder(nn.Module):
    def __init__(self, cfg: SigmaConfig):
        super().__init__()
        e = cfg.embed_dim
        # Official drop-path schedule: linspace over the 4 declared stages; stage i uses the slice of depths[i].
        depths = (*cfg.decoder_depths, cfg.decoder_depths[-1])
        rates = _linspace(cfg.decoder_drop_path_rate, sum(depths))
        stage_rates = [rates[sum(depths[:i]):sum(depths[: i + 1])] for i in range(3)]
        self.layers_up = nn.ModuleList([PatchExpand(8 * e)])
        for i in (2, 1, 0):  # layers_up.1 works at encoder stage 2's resolution, .3 at stage 0's
            self.layers_up.append(
                MambaUp(e * 2**i, cfg.decoder_depths[i], cfg.decoder_d_state, cfg.ssm_ratio, stage_rates[i], i > 0)
            )
        self.norm_up = LayerNorm(e, feeds_matmul=True)
        self.up = FinalUpsampleX4(e)
        self.output = nn.Conv2d(e, cfg.num_classes, kernel_size=1, bias=False)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:  # channels-last maps -> (B, K, 4h, 4w) logits
        y = self.layers_up[0](feats[3])
        for k in (1, 2, 3):
            skip = feats[3 - k]
            if y.shape[1:3] != skip.shape[1:3]:  # odd sizes: the encoder rounded up, the decoder resizes to the skip
                y = F.interpolate(y.permute(0, 3, 1, 2), size=skip.shape[1:3], mode="bilinear", align_corners=False)
                y = y.permute(0, 2, 3, 1)
            y = self.layers_up[k](y + skip)
        if self._head is None and _triton_head_trains(y):  # training: the last norm and the classifier as one op
            from ..ops import triton_head

            return triton_head.norm_head(self.up(self.norm_up(y), normalise=False), self.up.norm, self.output)
        y = self.up(self.norm_up(y))
        if self._head is not None:  # the inference copy: one GEMM into 16-aligned rows, classes sliced out
            return F.linear(y, self._head)[..., :self.output.out_channels].permute(0, 3, 1, 2)
        return self.output(y.permute(0, 3, 1, 2))

    _head: torch.Tensor | None = None

    def freeze(self, dtype: torch.dtype):
        """The 1x1 head as a (classes padded to a multiple of 16, C) matrix: with, say, 9 classes the convolution's
        output rows are 18 bytes, and cuDNN falls back to an unaligned kernel that took 66 us of a Sigma-T frame
        at 640x480 on the H100. Only for a copy whose weights will not change (``fast.inference_copy``)."""
        w = self.output.weight.detach().flatten(1)
        self._head = F.pad(w, (0, 0, 0, -w.shape[0] % 16)).to(dtype)


# --------------------------------------------------------------------------------------------------------------------
# The whole network
# --------------------------------------------------------------------------------------------------------------------
class Sigma(nn.Module):
    """``Sigma(cfg)(rgb, x)`` -> logits (B, num_classes, H, W) for normalised inputs (B, 3, H, W), H, W >= 32."""

    def __init__(self, cfg: SigmaConfig):
        super().__init__()
        self.config = cfg
        self.backbone = RGBXEncoder(cfg)
        self.decode_head = MambaDecoder(cfg)
        for m in self.decode_head.modules():  # as the official trainer's init_weights
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if rgb.shape != x.shape:
            raise ValueError(f"rgb and x must have the same shape, got {tuple(rgb.shape)} and {tuple(x.shape)}")
        h, w = rgb.shape[-2:]
        if h < 32 or w < 32:
            raise ValueError(f"input must be at least 32x32, got {h}x{w}")
        logits = self.decode_head(self.backbone(rgb, x))
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits


def build_sigma(cfg: SigmaConfig) -> Sigma:
    """Build a randomly initialised Sigma network (official initialisation)."""
    model = Sigma(cfg)
    if log.isEnabledFor(logging.INFO):
        from ..ops.selective_scan import describe_backend

        device = "cuda" if torch.cuda.is_available() else "cpu"
        log.info("built Sigma-%s (%d classes); selective scan on %s: %s", cfg.variant, cfg.num_classes, device,
                 describe_backend(device))
    return model
