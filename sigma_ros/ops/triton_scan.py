"""Multi-direction selective scan in one Triton kernel (inference).

Sigma scans each feature map in several orders and sums the outputs: SS2D row-major, column-major and both
reversed; ConMB the concatenated sequence forwards and reversed; CroMB one order. The generic path materialises
each order as a copy (cat + flip), hands mamba-ssm's kernel the 4x-expanded tensors and flips the outputs back.
This kernel instead

- reads a reversed direction in place, walking the base sequence from its end,
- reads SS2D's column-major order in place too, from the row-major tokens (``map_height``), and writes that order's
  outputs at row-major positions,
- loads B and C once for a block of channels (mamba-ssm reloads them for every channel),
- takes bf16/fp16/fp32 inputs straight from the projections (B and C may be strided views of one tensor) and keeps
  softplus, exp and the recurrence in fp32 (for 16-bit inputs the softplus's logarithm comes from the special-function
  unit, not libdevice's polynomial: see ``_softplus``),
- adds a reversed direction's output onto its forward twin: at most two addends on a zeroed buffer, so the sum is
  exact and independent of their order; or (``twins_apart``, inference) stores each direction's output apart for
  the consumer to add, with plain stores instead of atomic adds (the same sums, bitwise).

Layout: a program owns BLOCK_D (32) channels of one (batch, direction); its state tiles are (N/2, BLOCK_D), one for
the even and one for the odd states, one channel a lane, so a channel's N states sit in one thread's registers and
the sum over states needs no shuffles. Each thread steps through the sequence, software-pipelined: the loads of the
next group of steps (they do not depend on the state) are issued before the current group's arithmetic. B and C of
a step load as whole vectors of state pairs when they are a contiguous, aligned row (the model's projection lays
them out so), each pair one integer that bit operations split into the even and the odd state (for bf16 one
instruction a state: a plain conversion costs two for every odd one, 16 of a step's 196 instructions at N = 16,
SASS for sm_90). A sequence
too long for the GPU to fill with channels alone is cut into segments scanned in parallel: a first pass records
each segment's end state (from zero) and summed dt, the second folds those into each segment's entering state and
scans it again, writing outputs.

Interface (``scan_directions``):
    u      (batch, G, dim, L)   the G base sequences
    delta  (batch, K, dim, L)   per direction, indexed in base order (not reversed)
    A      (K * dim, N) float32 (negative; -exp(A_log))
    B, C   (batch, K, N, L)     per direction, base order; any strides (views of the projection are fine)
    D, delta_bias (K * dim,)    float32; delta_bias None: delta is the step size itself, softplus(dt + bias) already
                                taken (``ops.triton_delta``), so the kernel takes no softplus
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

__all__ = ["scan_directions", "scan_directions_op", "scan_directions_train", "triton_available", "runs_on", "supports",
           "pick_config", "pick_segments"]

def triton_available() -> bool:
    return triton is not None


def supports(d_state: int) -> bool:
    """The kernel's state tiles need a power-of-two size, split in even and odd halves (Sigma uses 16 and 4)."""
    return d_state > 1 and d_state & (d_state - 1) == 0


def runs_on(t: torch.Tensor) -> bool:
    """Whether the kernel can take this tensor: CUDA, or any device under Triton's CPU interpreter (tests)."""
    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter (CPU tests) runs no PTX
        @triton.jit
        def _log2_approx(x):
            return tl.log2(x)
    else:
        @triton.jit
        def _log2_approx(x):
            """One MUFU.LG2 (absolute error about 2^-22 near 1); ``tl.log2`` compiles to a libdevice polynomial."""
            return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                             is_pure=True, pack=1)

    @triton.jit
    def _position(t, L, reverse, column, H, W, inv_h, COLUMN_TWIN: tl.constexpr):
        """The base-order position of scan step t: from the end for a reversed direction; for a column-order step of
        an (H, W) map (``column``), the row-major position of its pixel."""
        pos = tl.where(reverse, L - 1 - t, t)
        if COLUMN_TWIN:  # column pos // H in float32 (exact below 2^22 positions): integer division costs ~25 ops
            col = ((pos.to(tl.float32) + 0.5) * inv_h).to(tl.int32)
            pos = tl.where(column, (pos - col * H) * W + col, pos)
        return pos

    @triton.jit
    def _split_pairs(x, elem: tl.constexpr):
        """Adjacent elements of type ``elem`` loaded as one integer of twice the width -> (first, second) in
        float32, by bit operations: a bf16 is the upper half of its float32, so the second of a bf16 pair is the
        integer with its low half cleared, and the first the integer shifted up (one instruction each; converting
        a vector of bf16 elements costs two for every odd one)."""
        if elem == tl.bfloat16:
            return (x << 16).to(tl.float32, bitcast=True), (x & -65536).to(tl.float32, bitcast=True)
        elif elem == tl.float16:
            return (x.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32),
                    (x >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32))
        else:
            return x.to(tl.int32).to(tl.float32, bitcast=True), (x >> 32).to(tl.int32).to(tl.float32, bitcast=True)

    @triton.jit
    def _states_at(col, pos, s_l, SPLIT: tl.constexpr, ELEM: tl.constexpr):
        """B or C of one position in float32: the (N,) vector (SPLIT 0), or its even and odd states as two (N/2,)
        vectors, from N/2 pair loads (SPLIT 1; ``col`` points at pairs, see ``_state_columns``) or from two strided
        loads (SPLIT 2; ``col`` is the (even, odd) pointers). ELEM: the element type behind SPLIT 1's pairs."""
        if SPLIT == 1:
            return _split_pairs(tl.load(col + pos * (s_l // 2)), ELEM)
        elif SPLIT == 2:
            return tl.load(col[0] + pos * s_l).to(tl.float32), tl.load(col[1] + pos * s_l).to(tl.float32)
        else:
            return tl.load(col + pos * s_l).to(tl.float32)

    @triton.jit
    def _step_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t, t_end, L, reverse, column, H, W, inv_h,
                     offs_d, mask_d, COLUMN_TWIN: tl.constexpr, SPLIT: tl.constexpr = 0, ELEM: tl.constexpr = None):
        """Loads of one step (none depend on the state, so a group of steps can be in flight together).

        A step past the segment's end reads a clamped position and is marked invalid (it changes nothing): no
        per-element masks, so B and C load as whole vectors. A column-order step of an (H, W) map (``column``)
        reads, and later writes, the row-major position of its pixel. B and C come as ``_states_at`` says."""
        valid = (offs_d * 0 + t) < t_end  # per element: Triton's interpreter (the tests) rejects a scalar mask
        pos = _position(tl.minimum(t, L - 1), L, reverse, column, H, W, inv_h, COLUMN_TWIN)
        u = tl.load(u_rows + pos * su_l, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(dt_rows + pos * sdt_l, mask=mask_d, other=0.0).to(tl.float32)
        b = _states_at(b_col, pos, sb_l, SPLIT, ELEM)
        c = _states_at(c_col, pos, sc_l, SPLIT, ELEM)
        return pos, valid, u, dt, b, c

    @triton.jit
    def _softplus(x, APPROX: tl.constexpr):
        """log(1 + exp(x)), x itself above 20, as mamba-ssm's kernel. APPROX (16-bit inputs) takes the logarithm
        from the special-function unit (the exact ``log`` is a libdevice polynomial of some twenty instructions, as
        many as a step's state updates at d_state 4) and, for x <= -3, where log2(1 + e) would lose e's low bits,
        sums log1p's series to the fourth power instead. Both stay within 4e-6 of the exact value, relative."""
        if APPROX:
            e = tl.exp2(x * 1.4426950408889634)
            series = e * (1.0 - e * (0.5 - e * (0.3333333333333333 - e * 0.25)))
            return tl.where(x <= 20.0, tl.where(x <= -3.0, series, _log2_approx(1.0 + e) * 0.6931471805599453), x)
        else:
            return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)

    @triton.jit
    def _step_size(dt, bias, valid, APPROX: tl.constexpr, SOFTPLUS: tl.constexpr):
        """dt = softplus(delta + bias) if SOFTPLUS, else delta as it comes; 0 for a step past the segment's end
        (valid = False), which then leaves the state as it is."""
        if SOFTPLUS:
            dt = _softplus(dt + bias, APPROX)
        return tl.where(valid, dt, 0.0)

    @triton.jit
    def _update(h, a, dt, dtu, b):
        """h_t = exp(dt A) h_{t-1} + B (dt u) for a tile of states (A scaled by log2 e)."""
        return tl.exp2(dt[None, :] * a) * h + b[:, None] * dtu[None, :]

    @triton.jit
    def _step(h, a, bias, u, dt, b, valid, APPROX: tl.constexpr, SOFTPLUS: tl.constexpr):
        """One step of all N states (the backward's layout): (h_t, dt)."""
        dt = _step_size(dt, bias, valid, APPROX, SOFTPLUS)
        return _update(h, a, dt, dt * u, b), dt

    @triton.jit
    def _advance(h, dt_sum, a, bias, dskip, y_rows, sy_l, mask_d, pos, valid, u, dt, b, c,
                 OUTPUT: tl.constexpr, ACCUMULATE: tl.constexpr, APPROX: tl.constexpr, SOFTPLUS: tl.constexpr):
        """One step: the state update, then either the output (second pass) or the dt sum (first pass). With
        ACCUMULATE the first pass zeroes the outputs that ``mask_d`` marks, for the second to add onto. The states,
        A, B and C come as (even states, odd states) pairs of tiles (see ``_states_at``)."""
        dt = _step_size(dt, bias, valid, APPROX, SOFTPLUS)
        dtu = dt * u
        h = _update(h[0], a[0], dt, dtu, b[0]), _update(h[1], a[1], dt, dtu, b[1])
        if OUTPUT:
            y = tl.sum(h[0] * c[0][:, None], axis=0) + tl.sum(h[1] * c[1][:, None], axis=0) + dskip * u
            if ACCUMULATE:
                tl.atomic_add(y_rows + pos * sy_l, y, mask=mask_d & valid, sem="relaxed")
            else:
                tl.store(y_rows + pos * sy_l, y, mask=mask_d & valid)
        else:
            dt_sum += dt
            if ACCUMULATE:
                tl.store(y_rows + pos * sy_l, tl.zeros_like(dt), mask=mask_d & valid)
        return h, dt_sum

    @triton.jit
    def _group_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t, t_end, L, reverse, column, H, W, inv_h,
                      offs_d, mask_d, COLUMN_TWIN: tl.constexpr, STEPS: tl.constexpr, SPLIT: tl.constexpr = 0,
                      ELEM: tl.constexpr = None):
        """The loads of STEPS (a power of two) consecutive steps from t, as a tuple."""
        if STEPS == 1:
            return (_step_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t, t_end, L, reverse, column,
                                 H, W, inv_h, offs_d, mask_d, COLUMN_TWIN, SPLIT, ELEM),)
        else:
            half: tl.constexpr = STEPS // 2
            return (_group_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t, t_end, L, reverse, column,
                                  H, W, inv_h, offs_d, mask_d, COLUMN_TWIN, half, SPLIT, ELEM)
                    + _group_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t + half, t_end, L,
                                    reverse, column, H, W, inv_h, offs_d, mask_d, COLUMN_TWIN, half, SPLIT, ELEM))

    @triton.jit
    def _advance_group(h, dt_sum, a, bias, dskip, y_rows, sy_l, mask_d, group, OUTPUT: tl.constexpr,
                       ACCUMULATE: tl.constexpr, APPROX: tl.constexpr, SOFTPLUS: tl.constexpr, STEPS: tl.constexpr):
        for i in tl.static_range(STEPS):
            pos, valid, u, dt, b, c = group[i]
            h, dt_sum = _advance(h, dt_sum, a, bias, dskip, y_rows, sy_l, mask_d, pos, valid, u, dt, b, c, OUTPUT,
                                 ACCUMULATE, APPROX, SOFTPLUS)
        return h, dt_sum

    @triton.jit
    def _channel_operands(bias_ptr, dskip_ptr, u_ptr, dt_ptr, batch, k, g, channel, offs_d, mask_d, su_b, su_g, su_d,
                          sdt_b, sdt_k, sdt_d):
        """A program's per-channel constants and rows (forward and backward kernels): dt bias, D, and the u and dt
        rows of its (batch, direction, channel block), to be offset by a position."""
        bias = tl.load(bias_ptr + channel, mask=mask_d, other=0.0)
        dskip = tl.load(dskip_ptr + channel, mask=mask_d, other=0.0)
        u_rows = u_ptr + batch * su_b + g * su_g + offs_d * su_d
        dt_rows = dt_ptr + batch * sdt_b + k * sdt_k + offs_d * sdt_d
        return bias, dskip, u_rows, dt_rows

    @triton.jit
    def _direction_operands(a_ptr, bias_ptr, dskip_ptr, u_ptr, dt_ptr, b_ptr, c_ptr, batch, k, g, channel, offs_d,
                            offs_n, mask_d, K, D, su_b, su_g, su_d, sdt_b, sdt_k, sdt_d, sb_b, sb_k, sb_n,
                            sc_b, sc_k, sc_n):
        """The backward kernel's operands, all N states in one tile: A (as stored, negative), ``_channel_operands``,
        and the B, C columns. A is (N, BLOCK_D): channels across the threads, a channel's N states inside one thread
        (in-thread sums); it arrives transposed, (N, K*D), so its loads are contiguous along channels and keep that
        layout."""
        a = tl.load(a_ptr + offs_n[:, None] * (K * D) + channel[None, :], mask=mask_d[None, :], other=0.0)
        bias, dskip, u_rows, dt_rows = _channel_operands(bias_ptr, dskip_ptr, u_ptr, dt_ptr, batch, k, g, channel,
                                                         offs_d, mask_d, su_b, su_g, su_d, sdt_b, sdt_k, sdt_d)
        b_col = b_ptr + batch * sb_b + k * sb_k + offs_n * sb_n
        c_col = c_ptr + batch * sc_b + k * sc_k + offs_n * sc_n
        return a, bias, dskip, u_rows, dt_rows, b_col, c_col

    @triton.jit
    def _state_rows(ptr, offs_p, D):
        """The (N/2, BLOCK_D) pointers of the even and of the odd states in an (N, D) block of ``ptr``."""
        even = ptr + (2 * offs_p[:, None]) * D
        return even, even + D

    @triton.jit
    def _summaries(h_seg_ptr, dt_seg_ptr, first_seg, j, seg, D, offs_p, offs_d, mask_d, N: tl.constexpr):
        """Segment j's summary (end state from zero, as its even and odd states; summed dt), masked to nothing (an
        identity fold) if j >= seg."""
        mask_j = mask_d & ((offs_d * 0 + j) < seg)
        even, odd = _state_rows(h_seg_ptr + (first_seg + j) * N * D + offs_d[None, :], offs_p, D)
        h_j = (tl.load(even, mask=mask_j[None, :], other=0.0), tl.load(odd, mask=mask_j[None, :], other=0.0))
        dt_j = tl.load(dt_seg_ptr + (first_seg + j) * D + offs_d, mask=mask_j, other=0.0)
        return h_j, dt_j

    @triton.jit
    def _summary_group(h_seg_ptr, dt_seg_ptr, first_seg, j, seg, D, offs_p, offs_d, mask_d, N: tl.constexpr,
                       FOLD: tl.constexpr):
        """FOLD (a power of two) consecutive summaries from j, as a tuple."""
        if FOLD == 1:
            return (_summaries(h_seg_ptr, dt_seg_ptr, first_seg, j, seg, D, offs_p, offs_d, mask_d, N),)
        else:
            half: tl.constexpr = FOLD // 2
            return (_summary_group(h_seg_ptr, dt_seg_ptr, first_seg, j, seg, D, offs_p, offs_d, mask_d, N, half)
                    + _summary_group(h_seg_ptr, dt_seg_ptr, first_seg, j + half, seg, D, offs_p, offs_d, mask_d, N,
                                     half))

    @triton.jit
    def _fold(h, a, group, FOLD: tl.constexpr):
        """Carry a state across summarised segments: h <- exp(A sum dt) h + (the segment's end state from zero)."""
        for i in tl.static_range(FOLD):
            h_j, dt_j = group[i]
            h = (tl.exp2(dt_j[None, :] * a[0]) * h[0] + h_j[0], tl.exp2(dt_j[None, :] * a[1]) * h[1] + h_j[1])
        return h

    @triton.jit
    def _state_columns(ptr, batch, k, s_b, s_k, s_n, offs_p, SPLIT: tl.constexpr, ELEM: tl.constexpr):
        """Where B or C of (batch, direction k) start, as ``_states_at`` reads them: the N/2 state pairs, each one
        integer of twice the element's width (SPLIT 1; the host checked the alignment), or the even and the odd
        states' pointers (SPLIT 2)."""
        base = ptr + batch * s_b + k * s_k
        if SPLIT == 1:
            if ELEM == tl.float32:
                return base.to(tl.pointer_type(tl.int64)) + offs_p
            else:
                return base.to(tl.pointer_type(tl.int32)) + offs_p
        else:
            even = base + 2 * offs_p * s_n
            return even, even + s_n

    # Alignment of A and of the segment summaries stays unknown to Triton on purpose: proven 16-byte alignment makes it
    # load those (N, BLOCK_D) tiles as 4-channel vectors, and the whole program then follows that layout, which spreads
    # a channel's states over 4 lanes (4x the softplus work, shuffles for every output). Unaligned, each lane keeps one
    # channel and all its states.
    @triton.jit(do_not_specialize=["a_ptr", "h_seg_ptr"])
    def _scan_directions_kernel(
        u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, y_ptr, h_seg_ptr, dt_seg_ptr,
        L, D, K, SEG, SEGMENTS, H, W, inv_h,
        su_b, su_g, su_d, su_l,
        sdt_b, sdt_k, sdt_d, sdt_l,
        sb_b, sb_k, sb_n, sb_l,
        sc_b, sc_k, sc_n, sc_l,
        sy_b, sy_g, sy_d, sy_l,
        G: tl.constexpr, N: tl.constexpr, OUTPUT: tl.constexpr, ACCUMULATE: tl.constexpr, COLUMN_TWIN: tl.constexpr,
        APPROX: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, STEPS: tl.constexpr,
        FOLD: tl.constexpr, SPLIT: tl.constexpr, ELEM: tl.constexpr = None,  # ELEM: SPLIT 1 only
        APART: tl.constexpr = False,
    ):
        """One program: BLOCK_D channels x all N states of one (batch, direction), over one segment of SEG steps.

        OUTPUT=False (first pass, every segment but the last): the segment's end state from a zero start and its
        summed dt, which together carry a state across the segment. OUTPUT=True: fold the earlier segments into the
        entering state, then scan the segment and write y.

        ACCUMULATE (twin directions add into one output): the first pass also zeroes that output, so no separate
        fill runs. A forward direction's program zeroes its segment; the last segment, which has no first-pass
        program, lies within the reversed twin's first segment, whose program zeroes that. APART instead: each
        direction stores its own output (map k, not k mod G), and the first pass writes nothing.

        The loop is software-pipelined by hand: it walks the segment in groups of STEPS steps (1, 2 or 4) and
        issues the next group's loads before the current group's arithmetic, so their latency overlaps that work
        instead of stalling every group. Two groups alternate roles, which needs no register copies.

        The states are kept as two tiles, the even and the odd ones, so that 16-bit B and C can load as pairs and
        split into float32 by bit operations (``SPLIT``, see ``_states_at``); the segment summaries keep the natural
        (N, D) order.
        """
        pid_bk = tl.program_id(0)
        seg = tl.program_id(2)
        batch = pid_bk // K
        k = pid_bk % K
        g = k % G
        reverse = k >= G
        column = g == 1  # read column-major, if COLUMN_TWIN
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_p = tl.arange(0, N // 2)  # state pairs: states 2p (even) and 2p + 1 (odd)
        mask_d = offs_d < D
        mask_y = mask_d if OUTPUT else mask_d & (((offs_d * 0 + k) < G) | ((offs_d * 0 + seg) == 0))
        channel = k * D + offs_d
        bias, dskip, u_rows, dt_rows = _channel_operands(bias_ptr, dskip_ptr, u_ptr, dt_ptr, batch, k, g, channel,
                                                         offs_d, mask_d, su_b, su_g, su_d, sdt_b, sdt_k, sdt_d)
        b_col = _state_columns(b_ptr, batch, k, sb_b, sb_k, sb_n, offs_p, SPLIT, ELEM)
        c_col = _state_columns(c_ptr, batch, k, sc_b, sc_k, sc_n, offs_p, SPLIT, ELEM)
        # log2(e): exp(dt A) = exp2(dt A log2 e), one MUFU op, as mamba-ssm
        a_even, a_odd = _state_rows(a_ptr + channel[None, :], offs_p, K * D)
        a = (tl.load(a_even, mask=mask_d[None, :], other=0.0) * 1.4426950408889634,
             tl.load(a_odd, mask=mask_d[None, :], other=0.0) * 1.4426950408889634)
        y_rows = y_ptr + batch * sy_b + (k if APART else g) * sy_g + offs_d * sy_d
        first_seg = pid_bk * SEGMENTS  # into the (B*K, segments, N, D) and (B*K, segments, D) summaries

        h = (tl.zeros([N // 2, BLOCK_D], dtype=tl.float32), tl.zeros([N // 2, BLOCK_D], dtype=tl.float32))
        dt_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
        if OUTPUT:  # the state entering this segment, from the first pass's summaries of the earlier ones
            even = _summary_group(h_seg_ptr, dt_seg_ptr, first_seg, 0, seg, D, offs_p, offs_d, mask_d, N, FOLD)
            for j in range(0, seg, 2 * FOLD):
                odd = _summary_group(h_seg_ptr, dt_seg_ptr, first_seg, j + FOLD, seg, D, offs_p, offs_d, mask_d, N,
                                     FOLD)
                h = _fold(h, a, even, FOLD)
                even = _summary_group(h_seg_ptr, dt_seg_ptr, first_seg, j + 2 * FOLD, seg, D, offs_p, offs_d,
                                      mask_d, N, FOLD)
                h = _fold(h, a, odd, FOLD)
        t_start = seg * SEG
        t_end = tl.minimum(t_start + SEG, L)
        even = _group_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t_start, t_end, L, reverse,
                             column, H, W, inv_h, offs_d, mask_d, COLUMN_TWIN, STEPS, SPLIT, ELEM)
        for t in range(t_start, t_end, 2 * STEPS):
            odd = _group_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t + STEPS, t_end, L,
                                reverse, column, H, W, inv_h, offs_d, mask_d, COLUMN_TWIN, STEPS, SPLIT, ELEM)
            h, dt_sum = _advance_group(h, dt_sum, a, bias, dskip, y_rows, sy_l, mask_y, even, OUTPUT, ACCUMULATE,
                                       APPROX, SOFTPLUS, STEPS)
            even = _group_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t + 2 * STEPS, t_end, L,
                                 reverse, column, H, W, inv_h, offs_d, mask_d, COLUMN_TWIN, STEPS, SPLIT, ELEM)
            h, dt_sum = _advance_group(h, dt_sum, a, bias, dskip, y_rows, sy_l, mask_y, odd, OUTPUT, ACCUMULATE,
                                       APPROX, SOFTPLUS, STEPS)
        if not OUTPUT:
            even, odd = _state_rows(h_seg_ptr + (first_seg + seg) * N * D + offs_d[None, :], offs_p, D)
            tl.store(even, h[0], mask=mask_d[None, :])
            tl.store(odd, h[1], mask=mask_d[None, :])
            tl.store(dt_seg_ptr + (first_seg + seg) * D + offs_d, dt_sum, mask=mask_d)


def state_loads(B: torch.Tensor, C: torch.Tensor) -> dict:
    """How the kernel reads B and C (its SPLIT and ELEM arguments): as pairs of adjacent states, one integer load
    of twice the width each, where both are contiguous along the states and every pair starts aligned (the model's
    projections are laid out so); else as separate loads of the even and of the odd states."""
    pair = 2 * B.element_size()
    paired = B.dtype == C.dtype and all(
        t.stride(2) == 1 and t.data_ptr() % pair == 0 and t.stride(0) % 2 == 0 and t.stride(1) % 2 == 0
        and t.stride(3) % 2 == 0 for t in (B, C))
    elem = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}.get(B.dtype)
    return dict(SPLIT=1, ELEM=elem) if paired and elem is not None else dict(SPLIT=2)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def pick_config(batch_dirs: int, dim: int, seq_len: int, d_state: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, segments, num_warps, steps) for a scan shape, from sweeps over Sigma's scans on an H100
    (bench/bench_gpu_scan.py --sweep; bench/RESULTS.md): one channel a lane, and the sequence cut into segments until
    there are about 16 programs a multiprocessor. More segments fill the GPU further but repeat more work (the second
    pass, the fold of the summaries). Alone, 24 timed best for every scan of Sigma-T; with the fusion blocks on side
    streams beside the encoder (``model.sigma.concurrent_fusion``) 16 gave the fastest whole forward on an H200 (8,
    12, 16, 24 and 36 timed). Four steps in flight hide the loads' latency best where segments are long or states
    few; at d_state 16 with short segments (Sigma's last two stages) their registers cost more occupancy than they
    hide, and one step does best."""
    segments = pick_segments(batch_dirs, dim, seq_len, 32)
    steps = 4 if d_state <= 4 or math.ceil(seq_len / segments) >= 128 else 1
    return 32, segments, 1, steps


def pick_segments(batch_dirs: int, dim: int, seq_len: int, block_d: int, warps_per_sm: int = 16) -> int:
    """Segments for about ``warps_per_sm`` one-warp programs per multiprocessor: at most 256, none under 16 steps."""
    sms = _multiprocessors(torch.cuda.current_device()) if torch.cuda.is_available() else 132
    warps = batch_dirs * math.ceil(dim / block_d)
    return max(1, min(256, math.ceil(warps_per_sm * sms / warps), seq_len // 16))


def scan_directions(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    D: torch.Tensor, delta_bias: torch.Tensor | None, bidirectional: bool,
                    channels_last: bool = False, map_height: int = 0,
                    config: tuple[int, int, int, int] | None = None, summaries: bool = False,
                    twins_apart: bool = False):
    """See the module docstring. Inputs may have any strides. ``channels_last`` stores the result as
    (batch, G, L, dim) (returned as its (batch, G, dim, L) view), so each step's outputs are contiguous.

    ``map_height`` > 0 (SS2D, G = 2): the two base sequences are one (map_height, L / map_height) map in row-major
    and in column-major order, and everything of the second, its u, delta, B, C and its result, is indexed by the
    pixel's row-major position. So one row-major tensor serves both orders (u may be a stride-0 expansion over G)
    and both results come back in the same layout: no transposed copies.
    ``config`` overrides (BLOCK_D, segments, num_warps, steps).

    ``twins_apart`` (inference, bidirectional): return (batch, K, dim, L), each direction's own output (k < G
    forwards, G + g its reversed twin), for the consumer to add (``ops.triton_norm``'s twins): the kernel then stores
    where it would add atomically, and the first pass writes nothing. y[:, g] + y[:, G + g] is bitwise the summed
    result (two addends on zero, in either order, give the same float).

    ``summaries`` (training): return (y, h_seg, dt_seg), the first pass's summaries of every segment (end state from
    zero, summed dt), with the sequence cut as the backward cuts it (``triton_scan_backward.pick_backward_config``),
    so the backward starts from them instead of running that pass again."""
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
    if map_height and (groups != 2 or seq_len % map_height):
        raise ValueError(f"map_height={map_height} needs 2 base sequences of a whole map, got {groups} of {seq_len}")
    if map_height and seq_len >= 2**22:  # the kernel divides positions by the height in float32
        raise ValueError(f"map_height: a map of {seq_len} positions is beyond the kernel's 2^22")
    height, width = (map_height, seq_len // map_height) if map_height else (1, seq_len)
    A_t = A.float().t().contiguous()  # (N, K*D)
    D = D.float().contiguous()
    softplus = delta_bias is not None
    delta_bias = delta_bias.float().contiguous() if softplus else D  # (never read without the softplus)
    block_d, segments, num_warps, steps = config or pick_config(batch * k_dirs, dim, seq_len, d_state)
    if summaries:
        seg_len = _backward.pick_backward_config(batch * k_dirs, dim, seq_len, d_state)[1]
    else:
        seg_len = math.ceil(seq_len / max(1, min(segments, seq_len)))
    segments = math.ceil(seq_len / seg_len)
    summarised = segments if summaries else segments - 1  # the forward never needs the last one's; the backward does
    apart = twins_apart and bidirectional
    if apart and summaries:
        raise ValueError("twins_apart is for inference: the training scan's backward takes the summed result")
    if apart:
        y = _output(u, False, channels_last, k_dirs)
    else:  # twins add onto zeros, which the first pass writes where it runs
        y = _output(u, bidirectional and not summarised, channels_last)
    h_seg = torch.empty((batch * k_dirs, segments, d_state, dim), device=u.device, dtype=torch.float32)
    dt_seg = torch.empty((batch * k_dirs, segments, dim), device=u.device, dtype=torch.float32)
    args = (
        u, delta, A_t, B, C, D, delta_bias, y, h_seg, dt_seg,
        seq_len, dim, k_dirs, seg_len, segments, height, width, 1.0 / height,
        *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *y.stride(),
    )
    meta = dict(G=groups, N=d_state, ACCUMULATE=bidirectional and not apart, APART=apart,
                COLUMN_TWIN=bool(map_height),
                APPROX=u.dtype != torch.float32,  # fp32 keeps the exact softplus (golden parity)
                SOFTPLUS=softplus,
                BLOCK_D=block_d, STEPS=steps,
                FOLD=max(1, 16 // d_state),  # summaries in flight: more would cost occupancy
                num_warps=num_warps, **state_loads(B, C))
    d_blocks = math.ceil(dim / block_d)
    if summarised:
        _scan_directions_kernel[(batch * k_dirs, d_blocks, summarised)](*args, OUTPUT=False, **meta)
    _scan_directions_kernel[(batch * k_dirs, d_blocks, segments)](*args, OUTPUT=True, **meta)
    return (y, h_seg, dt_seg) if summaries else y


def _output(u: torch.Tensor, zeroed: bool, channels_last: bool, groups: int = 0) -> torch.Tensor:
    """The (batch, G, dim, L) float32 result (``groups`` maps instead of G where given), stored channels-last if
    asked; ``zeroed`` for twins to add onto."""
    batch, base, dim, seq_len = u.shape
    groups = groups or base
    strides = (groups * seq_len * dim, seq_len * dim, 1, dim) if channels_last else \
        (groups * dim * seq_len, dim * seq_len, seq_len, 1)
    y = torch.empty_strided((batch, groups, dim, seq_len), strides, device=u.device, dtype=torch.float32)
    return y.zero_() if zeroed else y


@torch.library.custom_op("sigma_ros::scan_directions", mutates_args=())
def scan_directions_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor, delta_bias: torch.Tensor | None, bidirectional: bool,
                       channels_last: bool = False, map_height: int = 0, twins_apart: bool = False) -> torch.Tensor:
    """:func:`scan_directions` as an opaque op, so torch.compile keeps it in one graph without tracing Triton."""
    return scan_directions(u, delta, A, B, C, D, delta_bias, bidirectional, channels_last, map_height,
                           twins_apart=twins_apart)


@scan_directions_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, bidirectional, channels_last=False, map_height=0, twins_apart=False):
    return _output(u, False, channels_last, delta.shape[1] if twins_apart and bidirectional else 0)


@torch.library.custom_op("sigma_ros::scan_directions_train", mutates_args=())
def scan_directions_train_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                             C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor, bidirectional: bool,
                             channels_last: bool = False, map_height: int = 0
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`scan_directions` for training: (y, h_seg, dt_seg), the segment summaries kept for the backward."""
    return scan_directions(u, delta, A, B, C, D, delta_bias, bidirectional, channels_last, map_height,
                           summaries=True)


@scan_directions_train_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, bidirectional, channels_last=False, map_height=0):
    batch, _groups, dim, seq_len = u.shape
    k_dirs, d_state = delta.shape[1], A.shape[1]
    segments = math.ceil(seq_len / _backward.pick_backward_config(batch * k_dirs, dim, seq_len, d_state)[1])
    h_seg = u.new_empty((batch * k_dirs, segments, d_state, dim), dtype=torch.float32)
    return _output(u, False, channels_last), h_seg, u.new_empty((batch * k_dirs, segments, dim), dtype=torch.float32)


def scan_directions_train(u, delta, A, B, C, D, delta_bias, bidirectional: bool, channels_last: bool = False,
                          map_height: int = 0) -> torch.Tensor:
    """The scan with gradients: y of :func:`scan_directions_train_op`, whose backward reuses its summaries."""
    return scan_directions_train_op(u, delta, A, B, C, D, delta_bias, bidirectional, channels_last, map_height)[0]


from . import triton_scan_backward as _backward  # noqa: E402,F401  (registers scan_directions_op's backward)
