"""Multi-direction selective scan in one Triton kernel (inference).

Sigma scans each feature map in several orders and sums the outputs: SS2D row-major, column-major and both
reversed; ConMB the concatenated sequence forwards and reversed; CroMB one order. The generic path materialises
each order as a copy (cat + flip), hands mamba-ssm's kernel the 4x-expanded tensors and flips the outputs back.
This kernel instead

- reads a reversed direction in place, walking the base sequence from its end,
- loads B and C once for a block of channels (mamba-ssm reloads them for every channel),
- takes bf16/fp16/fp32 inputs straight from the projections (B and C may be strided views of one tensor) and keeps
  softplus, exp and the recurrence in fp32,
- adds a reversed direction's output onto its forward twin: at most two addends on a zeroed buffer, so the sum is
  exact and independent of their order.

Layout: a program owns BLOCK_D channels of one (batch, direction); its tiles are (N, BLOCK_D), so a channel's N
states sit in the registers of one thread (or two, for 16-channel blocks) and the sum over states needs no
shuffles. Each thread steps through the sequence; the loads of the next steps do not depend on the state and are
issued ahead of the arithmetic. A sequence too long for the GPU to fill with channels alone is cut into segments
scanned in parallel: a first pass records each segment's end state (from zero) and summed dt, the second folds
those into each segment's entering state and scans it again, writing outputs.

Interface (``scan_directions``):
    u      (batch, G, dim, L)   the G base sequences
    delta  (batch, K, dim, L)   per direction, indexed in base order (not reversed)
    A      (K * dim, N) float32 (negative; -exp(A_log))
    B, C   (batch, K, N, L)     per direction, base order; any strides (views of the projection are fine)
    D, delta_bias (K * dim,)    float32
    K = G, or K = 2G with ``bidirectional``: direction k < G scans u[:, k] forwards, k >= G scans u[:, k - G]
    reversed. Returns (batch, G, dim, L) float32: for each base sequence, the sum of its directions' outputs
    (each y = <C, h> + D * u, mamba-ssm semantics with delta_softplus=True).
"""
from __future__ import annotations

import functools
import math
import os

import torch

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None

__all__ = ["scan_directions", "scan_directions_op", "triton_available", "runs_on", "supports", "pick_config", "pick_segments"]

def triton_available() -> bool:
    return triton is not None


def supports(d_state: int) -> bool:
    """The kernel's state tiles need a power-of-two size (Sigma uses 16 and 4)."""
    return d_state > 0 and d_state & (d_state - 1) == 0


def runs_on(t: torch.Tensor) -> bool:
    """Whether the kernel can take this tensor: CUDA, or any device under Triton's CPU interpreter (tests)."""
    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _step_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t, t_end, L, reverse, offs_d, offs_n,
                     mask_d):
        """Loads of one step (none depend on the state, so a group of steps can be in flight together)."""
        pos = tl.where(reverse, L - 1 - t, t)
        # per-element masks (Triton's interpreter, which the tests use, rejects a scalar mask)
        valid = (offs_d * 0 + t) < t_end
        valid_n = (offs_n * 0 + t) < t_end
        u = tl.load(u_rows + pos * su_l, mask=mask_d & valid, other=0.0).to(tl.float32)
        dt = tl.load(dt_rows + pos * sdt_l, mask=mask_d & valid, other=0.0).to(tl.float32)
        b = tl.load(b_col + pos * sb_l, mask=valid_n, other=0.0).to(tl.float32)
        c = tl.load(c_col + pos * sc_l, mask=valid_n, other=0.0).to(tl.float32)
        return pos, valid, u, dt, b, c

    @triton.jit
    def _step(h, a, bias, u, dt, b, valid):
        """h_t = exp(dt A) h_{t-1} + dt B u; a step past the segment's end (valid = False) leaves h as it is."""
        dt = dt + bias
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)  # softplus, as mamba-ssm's kernel
        dt = tl.where(valid, dt, 0.0)
        return tl.exp2(dt[None, :] * a) * h + b[:, None] * (dt * u)[None, :], dt

    @triton.jit
    def _advance(h, dt_sum, a, bias, dskip, y_rows, sy_l, mask_d, pos, valid, u, dt, b, c,
                 OUTPUT: tl.constexpr, ACCUMULATE: tl.constexpr):
        """One step: the state update, then either the output (second pass) or the dt sum (first pass)."""
        h, dt = _step(h, a, bias, u, dt, b, valid)
        if OUTPUT:
            y = tl.sum(h * c[:, None], axis=0) + dskip * u
            if ACCUMULATE:
                tl.atomic_add(y_rows + pos * sy_l, y, mask=mask_d & valid, sem="relaxed")
            else:
                tl.store(y_rows + pos * sy_l, y, mask=mask_d & valid)
        else:
            dt_sum += dt
        return h, dt_sum

    @triton.jit
    def _scan_directions_kernel(
        u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, y_ptr, h_seg_ptr, dt_seg_ptr,
        L, D, K, SEG, SEGMENTS,
        su_b, su_g, su_d, su_l,
        sdt_b, sdt_k, sdt_d, sdt_l,
        sb_b, sb_k, sb_n, sb_l,
        sc_b, sc_k, sc_n, sc_l,
        sy_b, sy_g, sy_d, sy_l,
        G: tl.constexpr, N: tl.constexpr, OUTPUT: tl.constexpr, ACCUMULATE: tl.constexpr,
        BLOCK_D: tl.constexpr, STEPS: tl.constexpr,
    ):
        """One program: BLOCK_D channels x all N states of one (batch, direction), over one segment of SEG steps.

        OUTPUT=False (first pass, every segment but the last): the segment's end state from a zero start and its
        summed dt, which together carry a state across the segment. OUTPUT=True: fold the earlier segments into the
        entering state, then scan the segment and write y. Steps go in groups of STEPS (1, 2 or 4) whose loads are
        issued first.
        """
        pid_bk = tl.program_id(0)
        seg = tl.program_id(2)
        batch = pid_bk // K
        k = pid_bk % K
        g = k % G
        reverse = k >= G
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, N)
        mask_d = offs_d < D
        channel = k * D + offs_d
        # (N, BLOCK_D) tiles: channels across the threads, a channel's N states inside one thread (in-thread sums)
        # A arrives transposed, (N, K*D): loads contiguous along channels keep Triton's layout channel-major
        a = tl.load(a_ptr + offs_n[:, None] * (K * D) + channel[None, :], mask=mask_d[None, :], other=0.0)
        a = a * 1.4426950408889634  # log2(e): exp(dt A) = exp2(dt A log2 e), one MUFU op, as mamba-ssm
        bias = tl.load(bias_ptr + channel, mask=mask_d, other=0.0)
        dskip = tl.load(dskip_ptr + channel, mask=mask_d, other=0.0)
        u_rows = u_ptr + batch * su_b + g * su_g + offs_d * su_d
        dt_rows = dt_ptr + batch * sdt_b + k * sdt_k + offs_d * sdt_d
        b_col = b_ptr + batch * sb_b + k * sb_k + offs_n * sb_n
        c_col = c_ptr + batch * sc_b + k * sc_k + offs_n * sc_n
        y_rows = y_ptr + batch * sy_b + g * sy_g + offs_d * sy_d
        first_seg = pid_bk * SEGMENTS  # into the (B*K, segments, N, D) and (B*K, segments, D) summaries

        h = tl.zeros([N, BLOCK_D], dtype=tl.float32)
        dt_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
        if OUTPUT:
            for j in range(0, seg):  # state entering this segment, from the first pass's segment summaries
                h_j = tl.load(h_seg_ptr + ((first_seg + j) * N + offs_n[:, None]) * D + offs_d[None, :],
                              mask=mask_d[None, :], other=0.0)
                dt_j = tl.load(dt_seg_ptr + (first_seg + j) * D + offs_d, mask=mask_d, other=0.0)
                h = tl.exp2(dt_j[None, :] * a) * h + h_j
        t_end = tl.minimum(seg * SEG + SEG, L)
        for t in range(seg * SEG, t_end, STEPS):
            p0, v0, u0, d0, b0, c0 = _step_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t,
                                                  t_end, L, reverse, offs_d, offs_n, mask_d)
            if STEPS >= 2:
                p1, v1, u1, d1, b1, c1 = _step_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t + 1,
                                                      t_end, L, reverse, offs_d, offs_n, mask_d)
            if STEPS >= 4:
                p2, v2, u2, d2, b2, c2 = _step_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t + 2,
                                                      t_end, L, reverse, offs_d, offs_n, mask_d)
                p3, v3, u3, d3, b3, c3 = _step_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t + 3,
                                                      t_end, L, reverse, offs_d, offs_n, mask_d)
            h, dt_sum = _advance(h, dt_sum, a, bias, dskip, y_rows, sy_l, mask_d, p0, v0, u0, d0, b0, c0, OUTPUT,
                                 ACCUMULATE)
            if STEPS >= 2:
                h, dt_sum = _advance(h, dt_sum, a, bias, dskip, y_rows, sy_l, mask_d, p1, v1, u1, d1, b1, c1,
                                     OUTPUT, ACCUMULATE)
            if STEPS >= 4:
                h, dt_sum = _advance(h, dt_sum, a, bias, dskip, y_rows, sy_l, mask_d, p2, v2, u2, d2, b2, c2,
                                     OUTPUT, ACCUMULATE)
                h, dt_sum = _advance(h, dt_sum, a, bias, dskip, y_rows, sy_l, mask_d, p3, v3, u3, d3, b3, c3,
                                     OUTPUT, ACCUMULATE)
        if not OUTPUT:
            tl.store(h_seg_ptr + ((first_seg + seg) * N + offs_n[:, None]) * D + offs_d[None, :], h,
                     mask=mask_d[None, :])
            tl.store(dt_seg_ptr + (first_seg + seg) * D + offs_d, dt_sum, mask=mask_d)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def pick_config(batch_dirs: int, dim: int, seq_len: int, d_state: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, segments, num_warps, steps) for a scan shape, from a sweep on an H100 (bench/bench_gpu_scan.py).

    32 channels a warp for d_state 16 and wide layers, else 16 (a channel's states then sit on two threads: fewer
    registers, more warps); two steps' loads in flight; the sequence cut into segments until there are about 48 warps
    per multiprocessor (at most 64 segments, none shorter than 16 steps). bench/RESULTS.md lists the configs a later
    sweep found faster for the d_state-4 scans (more segments, four steps in flight).
    """
    block_d = 32 if d_state >= 16 or dim >= 768 else 16
    return block_d, pick_segments(batch_dirs, dim, seq_len, block_d), 1, 2


def pick_segments(batch_dirs: int, dim: int, seq_len: int, block_d: int) -> int:
    """Segments for about 48 one-warp programs per multiprocessor: at most 64, none shorter than 16 steps."""
    sms = _multiprocessors(torch.cuda.current_device()) if torch.cuda.is_available() else 132
    warps = batch_dirs * math.ceil(dim / block_d)
    return max(1, min(64, math.ceil(48 * sms / warps), seq_len // 16))


def scan_directions(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    D: torch.Tensor, delta_bias: torch.Tensor, bidirectional: bool,
                    channels_last: bool = False, config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """See the module docstring. Inputs may have any strides. ``channels_last`` stores the result as
    (batch, G, L, dim) (returned as its (batch, G, dim, L) view), so each step's outputs are contiguous.
    ``config`` overrides (BLOCK_D, segments, num_warps, steps)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    batch, groups, dim, seq_len = u.shape
    k_dirs = delta.shape[1]
    d_state = A.shape[1]
    if k_dirs != (2 * groups if bidirectional else groups):
        raise ValueError(f"{k_dirs} directions for {groups} sequences (bidirectional={bidirectional})")
    if delta.shape != (batch, k_dirs, dim, seq_len) or B.shape != (batch, k_dirs, d_state, seq_len) \
            or C.shape != B.shape or A.shape != (k_dirs * dim, d_state):
        raise ValueError(f"shape mismatch: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)}")
    if not supports(d_state):
        raise ValueError(f"d_state must be a power of two for this kernel, got {d_state}")
    A_t = A.float().t().contiguous()  # (N, K*D)
    D, delta_bias = (t.float().contiguous() for t in (D, delta_bias))
    y = _output(u, bidirectional, channels_last)
    block_d, segments, num_warps, steps = config or pick_config(batch * k_dirs, dim, seq_len, d_state)
    segments = max(1, min(segments, seq_len))
    seg_len = math.ceil(seq_len / segments)
    segments = math.ceil(seq_len / seg_len)
    h_seg = torch.empty((batch * k_dirs, segments, d_state, dim), device=u.device, dtype=torch.float32)
    dt_seg = torch.empty((batch * k_dirs, segments, dim), device=u.device, dtype=torch.float32)
    args = (
        u, delta, A_t, B, C, D, delta_bias, y, h_seg, dt_seg,
        seq_len, dim, k_dirs, seg_len, segments,
        *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *y.stride(),
    )
    meta = dict(G=groups, N=d_state, ACCUMULATE=bidirectional, BLOCK_D=block_d, STEPS=steps, num_warps=num_warps)
    d_blocks = math.ceil(dim / block_d)
    if segments > 1:  # the last segment's summary is never needed
        _scan_directions_kernel[(batch * k_dirs, d_blocks, segments - 1)](*args, OUTPUT=False, **meta)
    _scan_directions_kernel[(batch * k_dirs, d_blocks, segments)](*args, OUTPUT=True, **meta)
    return y


def _output(u: torch.Tensor, bidirectional: bool, channels_last: bool) -> torch.Tensor:
    """The (batch, G, dim, L) float32 result, stored channels-last if asked; zeroed where twin directions add up."""
    batch, groups, dim, seq_len = u.shape
    strides = (groups * seq_len * dim, seq_len * dim, 1, dim) if channels_last else \
        (groups * dim * seq_len, dim * seq_len, seq_len, 1)
    y = torch.empty_strided(u.shape, strides, device=u.device, dtype=torch.float32)
    return y.zero_() if bidirectional else y


@torch.library.custom_op("sigma_ros::scan_directions", mutates_args=())
def scan_directions_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor, delta_bias: torch.Tensor, bidirectional: bool,
                       channels_last: bool = False) -> torch.Tensor:
    """:func:`scan_directions` as an opaque op, so torch.compile keeps it in one graph without tracing Triton."""
    return scan_directions(u, delta, A, B, C, D, delta_bias, bidirectional, channels_last)


@scan_directions_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, bidirectional, channels_last=False):
    return _output(u, False, channels_last)
