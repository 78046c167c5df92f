"""Backward of the multi-direction Triton scan (``triton_scan.scan_directions``), for training.

mamba-ssm's backward kernel was 214 of a compiled Sigma-T training step's 417 ms of GPU time (bench/RESULTS.md), and
it needs every reversed direction as a flipped copy. This one reads the directions in place, as the forward does,
and needs nothing saved by the forward but its inputs and, in training, its first pass's segment summaries
(``triton_scan.scan_directions_train_op``).

Per channel d of direction k, in scan order t (mamba-ssm semantics, dt = softplus(delta + bias)):
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,        y_t = <C_t, h_t> + D u_t
The adjoint lam_t = dL/dh_t runs backwards: lam_t = C_t gy_t + rho_{t+1}, with the carry rho_t = exp(dt_t A) lam_t.
From lam_t and the states h_{t-1}, h_t:
    dC_t = sum_d gy_t h_t           dB_t = sum_d lam_t dt_t u_t       du_t = D gy_t + dt_t <lam_t, B_t>
    ddt_t = <lam_t, A exp(dt_t A) h_{t-1} + B_t u_t>                  dA += lam_t dt_t exp(dt_t A) h_{t-1}
(dB and dC sum over a direction's channels, since B and C are shared by them.)

Three stages, each parallel over (batch, direction), blocks of BLOCK_D channels and segments of the sequence:

1. summaries per segment: the end state from a zero start and the summed dt (the forward kernel's first pass,
   ``triton_scan._scan_directions_kernel``: kept from the training forward, which cuts its segments as this does,
   else run here), and the carry rho at its start from a zero carry at its end
   (``_adjoint_summaries``).
2. ``_fold``: per (batch, direction, channel block), walks the segments once forwards and once backwards and turns
   those summaries into each segment's true entering state and carry (exp(A sum dt) carries a value across a
   segment).
3. ``_gradients``: walks a segment backwards, chunk by chunk. The adjoint needs h_{t-1} in reverse order, which the
   recurrence cannot give stably (it would divide by exp(dt A)); so the segment's states are recomputed forwards
   once, keeping the state at each chunk start, and each chunk's states are recomputed again into a scratch buffer
   that the reverse pass reads. Its programs are persistent (a fixed number, each looping over work), so the
   scratch is tens of KB per program rather than every state of the sequence.
dB, dC (and du where a reversed direction shares u with its forward twin) are summed with float32 atomics.
"""
from __future__ import annotations

import math

import torch

from . import triton_scan
from .triton_scan import triton

if triton is not None:
    import triton.language as tl

    from .triton_scan import _direction_operands, _group_inputs, _position, _softplus, _step

    @triton.jit
    def _setup(pid_bk, d_block, K, D, G: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr):
        """A program's batch, direction k, base sequence g, whether k is reversed, whether g is the column order,
        its channels, states, channel mask and channels' indices over all directions."""
        batch = pid_bk // K
        k = pid_bk % K
        g = k % G
        offs_d = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, N)
        mask_d = offs_d < D
        return batch, k, g, k >= G, g == 1, offs_d, offs_n, mask_d, k * D + offs_d

    @triton.jit
    def _advance_states(h, a, bias, group, t, t0, out, tile, CHUNK, APPROX: tl.constexpr, EVERY_STEP: tl.constexpr,
                        N: tl.constexpr, BLOCK_D: tl.constexpr, STEPS: tl.constexpr):
        """STEPS steps from t of a recomputation from t0: EVERY_STEP stores each new state at out[t - t0], else the
        state entering every CHUNK-th step at out[(t - t0) // CHUNK]."""
        for i in tl.static_range(STEPS):
            pos, valid, u, dt, b, c = group[i]
            if not EVERY_STEP:
                first = valid & ((valid.to(tl.int32) * 0 + (t + i - t0) % CHUNK) == 0)  # per element (interpreter)
                tl.store(out + ((t + i - t0) // CHUNK) * N * BLOCK_D + tile, h, mask=first[None, :] & (tile >= 0))
            h, dt = _step(h, a, bias, u, dt, b, valid, APPROX, True)
            if EVERY_STEP:
                tl.store(out + (t + i - t0) * N * BLOCK_D + tile, h, mask=valid[None, :] & (tile >= 0))
        return h

    @triton.jit
    def _recompute(h, a, bias, u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t0, t1, L, reverse, column,
                   H, W, inv_h, offs_d, mask_d, out, tile, CHUNK, COLUMN_TWIN: tl.constexpr, APPROX: tl.constexpr,
                   EVERY_STEP: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr, STEPS: tl.constexpr):
        """The states of steps t0 .. t1-1 from h = h_{t0-1}, stored as ``_advance_states`` says; returns h_{t1-1}.
        Software-pipelined as the forward kernel: the next group of steps' loads are issued before the current
        group's arithmetic."""
        even = _group_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t0, t1, L, reverse, column, H, W,
                             inv_h, offs_d, mask_d, COLUMN_TWIN, STEPS)
        for t in range(t0, t1, 2 * STEPS):
            odd = _group_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t + STEPS, t1, L, reverse,
                                column, H, W, inv_h, offs_d, mask_d, COLUMN_TWIN, STEPS)
            h = _advance_states(h, a, bias, even, t, t0, out, tile, CHUNK, APPROX, EVERY_STEP, N, BLOCK_D, STEPS)
            even = _group_inputs(u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t + 2 * STEPS, t1, L,
                                 reverse, column, H, W, inv_h, offs_d, mask_d, COLUMN_TWIN, STEPS)
            h = _advance_states(h, a, bias, odd, t + STEPS, t0, out, tile, CHUNK, APPROX, EVERY_STEP, N, BLOCK_D,
                                STEPS)
        return h

    @triton.jit(do_not_specialize=["a_ptr", "rz_ptr"])
    def _adjoint_summaries_kernel(
        dt_ptr, a_ptr, c_ptr, bias_ptr, gy_ptr, rz_ptr, L, D, K, SEG, SEGMENTS, H, W, inv_h,
        sdt_b, sdt_k, sdt_d, sdt_l, sc_b, sc_k, sc_n, sc_l, sg_b, sg_g, sg_d, sg_l,
        G: tl.constexpr, N: tl.constexpr, COLUMN_TWIN: tl.constexpr, APPROX: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Per segment, the adjoint carry at its start from a zero carry at its end (rz). (The states' summaries
        come from the forward kernel's first pass.)"""
        pid_bk = tl.program_id(0)
        seg = tl.program_id(2)
        batch, k, g, reverse, column, offs_d, offs_n, mask_d, channel = _setup(pid_bk, tl.program_id(1), K, D, G, N,
                                                                               BLOCK_D)
        a = tl.load(a_ptr + offs_n[:, None] * (K * D) + channel[None, :], mask=mask_d[None, :], other=0.0)
        a = a * 1.4426950408889634
        bias = tl.load(bias_ptr + channel, mask=mask_d, other=0.0)
        dt_rows = dt_ptr + batch * sdt_b + k * sdt_k + offs_d * sdt_d
        c_col = c_ptr + batch * sc_b + k * sc_k + offs_n * sc_n
        gy_rows = gy_ptr + batch * sg_b + g * sg_g + offs_d * sg_d
        t_start = seg * SEG
        t_end = tl.minimum(t_start + SEG, L)
        rho = tl.zeros([N, BLOCK_D], dtype=tl.float32)
        for i in range(0, t_end - t_start):
            pos = _position(t_end - 1 - i, L, reverse, column, H, W, inv_h, COLUMN_TWIN)
            dt = _softplus(tl.load(dt_rows + pos * sdt_l, mask=mask_d, other=0.0).to(tl.float32) + bias, APPROX)
            c = tl.load(c_col + pos * sc_l).to(tl.float32)
            gy = tl.load(gy_rows + pos * sg_l, mask=mask_d, other=0.0).to(tl.float32)
            rho = tl.exp2(dt[None, :] * a) * (c[:, None] * gy[None, :] + rho)
        tl.store(rz_ptr + ((pid_bk * SEGMENTS + seg) * N + offs_n[:, None]) * D + offs_d[None, :], rho,
                 mask=mask_d[None, :])

    @triton.jit(do_not_specialize=["a_ptr", "hz_ptr", "h_in_ptr", "rz_ptr"])
    def _fold_kernel(a_ptr, hz_ptr, h_in_ptr, rz_ptr, sz_ptr, D, K, SEGMENTS, N: tl.constexpr,
                     BLOCK_D: tl.constexpr):
        """h_in[s] <- the state entering segment s (from the end states hz; h_in may be hz), and in place
        rz[s] <- the carry entering it at its end."""
        pid_bk = tl.program_id(0)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, N)
        mask_d = offs_d < D
        channel = (pid_bk % K) * D + offs_d
        a = tl.load(a_ptr + offs_n[:, None] * (K * D) + channel[None, :], mask=mask_d[None, :], other=0.0)
        a = a * 1.4426950408889634
        first = pid_bk * SEGMENTS
        h = tl.zeros([N, BLOCK_D], dtype=tl.float32)
        for s in range(0, SEGMENTS):
            at = ((first + s) * N + offs_n[:, None]) * D + offs_d[None, :]
            h_s = tl.load(hz_ptr + at, mask=mask_d[None, :], other=0.0)
            dt_s = tl.load(sz_ptr + (first + s) * D + offs_d, mask=mask_d, other=0.0)
            tl.store(h_in_ptr + at, h, mask=mask_d[None, :])
            h = tl.exp2(dt_s[None, :] * a) * h + h_s
        rho = tl.zeros([N, BLOCK_D], dtype=tl.float32)
        for i in range(0, SEGMENTS):
            s = SEGMENTS - 1 - i
            at = ((first + s) * N + offs_n[:, None]) * D + offs_d[None, :]
            r_s = tl.load(rz_ptr + at, mask=mask_d[None, :], other=0.0)
            dt_s = tl.load(sz_ptr + (first + s) * D + offs_d, mask=mask_d, other=0.0)
            tl.store(rz_ptr + at, rho, mask=mask_d[None, :])
            rho = tl.exp2(dt_s[None, :] * a) * rho + r_s

    # Unlike the forward (triton_scan.py), the scratch's alignment is left for Triton to see: its (N, BLOCK_D) tiles
    # then load as 4-channel vectors and the program follows that layout, 4 states x 4 channels a lane. That costs
    # 4x the per-channel work, but dB and dC sum over channels, mostly within a lane: the reverse step takes 40
    # shuffles instead of 160 and 431 instructions instead of 692, the recomputation loops 8 to 12 % fewer (SASS,
    # sm_90, d_state 16; 207 registers instead of 168, still 9 warps a multiprocessor).
    @triton.jit(do_not_specialize=["a_ptr", "hz_ptr", "rz_ptr", "da_ptr"])
    def _gradients_kernel(
        u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, gy_ptr, hz_ptr, rz_ptr, scratch_ptr,
        du_ptr, ddt_ptr, da_ptr, db_ptr, dc_ptr, dd_ptr, dbias_ptr,
        L, D, K, SEG, SEGMENTS, H, W, inv_h, WORK, D_BLOCKS,
        su_b, su_g, su_d, su_l, sdt_b, sdt_k, sdt_d, sdt_l, sb_b, sb_k, sb_n, sb_l, sc_b, sc_k, sc_n, sc_l,
        sg_b, sg_g, sg_d, sg_l, sdu_b, sdu_g, sdu_d, sdu_l, sddt_b, sddt_k, sddt_d, sddt_l,
        G: tl.constexpr, N: tl.constexpr, COLUMN_TWIN: tl.constexpr, APPROX: tl.constexpr, ACCUMULATE: tl.constexpr,
        BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, CHUNKS: tl.constexpr, STEPS: tl.constexpr,
    ):
        """Persistent: each program takes work items (batch x direction, channel block, segment) in turn.
        Its scratch: CHUNKS chunk-start states, then CHUNK states of the chunk being reversed, each (N, BLOCK_D).
        dB, dC are float32 (batch, K, L, N); dA is (N, K*D)."""
        lanes = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, N)
        tile = offs_n[:, None] * BLOCK_D + lanes[None, :]
        starts = scratch_ptr + tl.program_id(0) * (CHUNKS + CHUNK) * N * BLOCK_D  # chunk-start states
        states = starts + CHUNKS * N * BLOCK_D  # the states of the chunk being reversed
        for w in range(tl.program_id(0), WORK, tl.num_programs(0)):
            seg = w % SEGMENTS
            d_block = (w // SEGMENTS) % D_BLOCKS
            pid_bk = w // (SEGMENTS * D_BLOCKS)
            batch, k, g, reverse, column, offs_d, offs_n, mask_d, channel = _setup(pid_bk, d_block, K, D, G, N,
                                                                                   BLOCK_D)
            a_nat, bias, dskip, u_rows, dt_rows, b_col, c_col = _direction_operands(
                a_ptr, bias_ptr, dskip_ptr, u_ptr, dt_ptr, b_ptr, c_ptr, batch, k, g, channel, offs_d, offs_n, mask_d,
                K, D, su_b, su_g, su_d, sdt_b, sdt_k, sdt_d, sb_b, sb_k, sb_n, sc_b, sc_k, sc_n)
            a = a_nat * 1.4426950408889634
            gy_rows = gy_ptr + batch * sg_b + g * sg_g + offs_d * sg_d
            du_rows = du_ptr + batch * sdu_b + g * sdu_g + offs_d * sdu_d
            ddt_rows = ddt_ptr + batch * sddt_b + k * sddt_k + offs_d * sddt_d
            dbc_col = (batch * K + k) * L * N + offs_n  # into dB, dC (batch, K, L, N)
            at = ((pid_bk * SEGMENTS + seg) * N + offs_n[:, None]) * D + offs_d[None, :]
            t_start = seg * SEG
            t_end = tl.minimum(t_start + SEG, L)

            # Forwards through the segment, keeping each chunk's entering state.
            h = tl.load(hz_ptr + at, mask=mask_d[None, :], other=0.0)
            h = _recompute(h, a, bias, u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t_start, t_end, L,
                           reverse, column, H, W, inv_h, offs_d, mask_d, starts, tile, CHUNK, COLUMN_TWIN, APPROX,
                           False, N, BLOCK_D, STEPS)
            tl.debug_barrier()

            # Backwards, chunk by chunk: recompute the chunk's states, then run the adjoint over them.
            rho = tl.load(rz_ptr + at, mask=mask_d[None, :], other=0.0)
            da = tl.zeros([N, BLOCK_D], dtype=tl.float32)
            dd = tl.zeros([BLOCK_D], dtype=tl.float32)
            dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
            n_chunks = (t_end - t_start + CHUNK - 1) // CHUNK
            for j in range(0, n_chunks):
                t0 = t_start + (n_chunks - 1 - j) * CHUNK
                t1 = tl.minimum(t0 + CHUNK, t_end)
                h = tl.load(starts + (n_chunks - 1 - j) * N * BLOCK_D + tile)
                h = _recompute(h, a, bias, u_rows, dt_rows, b_col, c_col, su_l, sdt_l, sb_l, sc_l, t0, t1, L, reverse,
                               column, H, W, inv_h, offs_d, mask_d, states, tile, CHUNK, COLUMN_TWIN, APPROX, True, N,
                               BLOCK_D, STEPS)
                tl.debug_barrier()
                for i in range(0, t1 - t0):
                    t = t1 - 1 - i
                    pos = _position(t, L, reverse, column, H, W, inv_h, COLUMN_TWIN)
                    h = tl.load(states + (t - t0) * N * BLOCK_D + tile)
                    u = tl.load(u_rows + pos * su_l, mask=mask_d, other=0.0).to(tl.float32)
                    x = tl.load(dt_rows + pos * sdt_l, mask=mask_d, other=0.0).to(tl.float32) + bias
                    b = tl.load(b_col + pos * sb_l).to(tl.float32)
                    c = tl.load(c_col + pos * sc_l).to(tl.float32)
                    gy = tl.load(gy_rows + pos * sg_l, mask=mask_d, other=0.0).to(tl.float32)
                    dt = tl.where(mask_d, _softplus(x, APPROX), 0.0)
                    lam = c[:, None] * gy[None, :] + rho
                    dtu = dt * u
                    # lam * exp(dt A) h_{t-1}, with exp(dt A) h_{t-1} = h_t - dt B u: no second state to load
                    lam_prev = lam * (h - b[:, None] * dtu[None, :])
                    lam_b = tl.sum(lam * b[:, None], axis=0)
                    ddt = tl.sum(lam_prev * a_nat, axis=0) + u * lam_b
                    dx = tl.where(x <= 20.0, ddt / (1.0 + tl.exp2(-x * 1.4426950408889634)), ddt)
                    da += lam_prev * dt[None, :]
                    dd += gy * u
                    dbias += dx
                    du = dskip * gy + dt * lam_b
                    tl.store(ddt_rows + pos * sddt_l, dx.to(ddt_ptr.dtype.element_ty), mask=mask_d)
                    if ACCUMULATE:  # a reversed direction and its forward twin share u
                        tl.atomic_add(du_rows + pos * sdu_l, du, mask=mask_d, sem="relaxed")
                    else:
                        tl.store(du_rows + pos * sdu_l, du, mask=mask_d)
                    tl.atomic_add(db_ptr + dbc_col + pos * N, tl.sum(lam * dtu[None, :], axis=1), sem="relaxed")
                    tl.atomic_add(dc_ptr + dbc_col + pos * N, tl.sum(h * gy[None, :], axis=1), sem="relaxed")
                    rho = tl.exp2(dt[None, :] * a) * lam
                tl.debug_barrier()
            tl.atomic_add(da_ptr + offs_n[:, None] * (K * D) + channel[None, :], da, mask=mask_d[None, :],
                          sem="relaxed")
            tl.atomic_add(dd_ptr + channel, dd, mask=mask_d, sem="relaxed")
            tl.atomic_add(dbias_ptr + channel, dbias, mask=mask_d, sem="relaxed")


def pick_backward_config(batch_dirs: int, dim: int, seq_len: int, d_state: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, segment length, chunk, programs) for the backward: 32 channels a warp, segments for about 48 warps
    a multiprocessor, and

    - d_state >= 8: chunks of 128 / d_state steps, 8 programs a multiprocessor: the best of
      ``bench/bench_gpu_scan_train.py --sweep`` on an H100 for each of Sigma-T's four encoder shapes at batch 8
      (bench/RESULTS.md, eighth session), 8 to 13 % faster than the choice before it. The scratch (a segment's
      chunk-start states and a chunk's states, per program) is then about 320 MB on an H100 for the first stage's
      shape, for the duration of the call.
    - d_state 4 (fusion and decoder blocks): chunks of 16 steps, 16 programs a multiprocessor. The sweep (ninth
      session, H100, Sigma-T at batch 8) reached four of its calls: this is the best for two (the first stage's
      ConMB scan, 10.1 -> 6.4 ms, and the second stage's CroMB scans, 28 % faster); the best for the other two
      also had chunks of 16, with 64 channels a warp (12 and 38 % faster). Timed as the default (tenth session):
      the ConMB call's forward + backward 12.1 -> 8.6 ms; the other d_state-4 calls within 3 % or faster."""
    sms = triton_scan._multiprocessors(torch.cuda.current_device()) if torch.cuda.is_available() else 4
    chunk, per_sm = (max(4, 128 // d_state), 8) if d_state >= 8 else (16, 16)
    block_d = 32
    segments = triton_scan.pick_segments(batch_dirs, dim, seq_len, block_d, warps_per_sm=48)
    seg_len = math.ceil(math.ceil(seq_len / segments) / chunk) * chunk
    return block_d, seg_len, chunk, per_sm * sms


def scan_directions_backward(gy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                             B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor,
                             bidirectional: bool, map_height: int = 0,
                             config: tuple[int, int, int, int] | None = None,
                             summaries: tuple[torch.Tensor, torch.Tensor] | None = None,
                             input_dtypes: bool = True) -> tuple[torch.Tensor, ...]:
    """Gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias) of ``triton_scan.scan_directions`` for the output
    gradient ``gy`` (batch, G, dim, L); each in its input's dtype and shape (du float32 where u is). The kernel sums
    du, dB and dC in float32; ``input_dtypes=False`` returns them so, for a caller that casts them where the cast
    can fuse into the next kernel (the op's autograd, under torch.compile).
    ``summaries``: the forward's (h_seg, dt_seg) (``scan_directions(..., summaries=True)``); used where they are cut
    into this call's segments, else recomputed."""
    batch, groups, dim, seq_len = u.shape
    k_dirs, d_state = delta.shape[1], A.shape[1]
    height, width = (map_height, seq_len // map_height) if map_height else (1, seq_len)
    block_d, seg_len, chunk, programs = config or pick_backward_config(batch * k_dirs, dim, seq_len, d_state)
    segments = math.ceil(seq_len / seg_len)
    d_blocks = math.ceil(dim / block_d)
    dev = u.device
    A_t = A.float().t().contiguous()  # (N, K*D), as the forward reads it
    D, delta_bias = (t.float().contiguous() for t in (D, delta_bias))
    steps = 2  # recomputation steps in flight (4 cost more registers than they hide; SASS, sm_90)
    common = (seq_len, dim, k_dirs, seg_len, segments, height, width, 1.0 / height)
    strides = (*u.stride(), *delta.stride(), *B.stride(), *C.stride(), *gy.stride())
    meta = dict(G=groups, N=d_state, COLUMN_TWIN=bool(map_height), APPROX=u.dtype != torch.float32,
                BLOCK_D=block_d)
    grid = (batch * k_dirs, d_blocks, segments)
    if summaries is not None and summaries[0].shape[1] == segments:
        hz, sz = summaries  # the forward's; the fold writes the entering states beside them
        h_in = torch.empty_like(hz)
    else:  # the states' summaries (end state from zero, summed dt) are the forward kernel's first pass
        hz = h_in = torch.empty((batch * k_dirs, segments, d_state, dim), device=dev, dtype=torch.float32)
        sz = torch.empty((batch * k_dirs, segments, dim), device=dev, dtype=torch.float32)
        triton_scan._scan_directions_kernel[grid](
            u, delta, A_t, B, C, D, delta_bias, hz, hz, sz, *common, *u.stride(), *delta.stride(), *B.stride(),
            *C.stride(), *gy.stride(), OUTPUT=False, ACCUMULATE=False, SOFTPLUS=True, STEPS=steps, FOLD=1, num_warps=1,
            **meta, **triton_scan.state_loads(B, C))
    rz = torch.empty_like(hz)
    _adjoint_summaries_kernel[grid](delta, A_t, C, delta_bias, gy, rz, *common, *delta.stride(), *C.stride(),
                                    *gy.stride(), num_warps=1, **meta)
    _fold_kernel[(batch * k_dirs, d_blocks)](A_t, hz, h_in, rz, sz, dim, k_dirs, segments, N=d_state,
                                             BLOCK_D=block_d, num_warps=1)

    du = triton_scan._output(u, bidirectional, channels_last=u.stride(-2) == 1 and u.stride(-1) != 1)
    ddelta = torch.empty_like(delta)
    dA_t = torch.zeros_like(A_t)
    dB = torch.zeros((batch, k_dirs, seq_len, d_state), device=dev, dtype=torch.float32)
    dC = torch.zeros_like(dB)
    dD, dbias = torch.zeros_like(D), torch.zeros_like(delta_bias)
    work = batch * k_dirs * d_blocks * segments
    programs = max(1, min(programs, work))
    chunks = math.ceil(seg_len / chunk)
    scratch = torch.empty((programs, chunks + chunk, d_state, block_d), device=dev, dtype=torch.float32)
    _gradients_kernel[(programs,)](
        u, delta, A_t, B, C, D, delta_bias, gy, h_in, rz, scratch, du, ddelta, dA_t, dB, dC, dD, dbias,
        *common, work, d_blocks, *strides, *du.stride(), *ddelta.stride(),
        ACCUMULATE=bidirectional, CHUNK=chunk, CHUNKS=chunks, STEPS=steps, num_warps=1, **meta)
    dB, dC = dB.transpose(-1, -2), dC.transpose(-1, -2)
    if input_dtypes:
        du, dB, dC = du.to(u.dtype), dB.to(B.dtype), dC.to(C.dtype)
    return du, ddelta, dA_t.t().to(A.dtype), dB, dC, dD, dbias


# --------------------------------------------------------------------------------------------------------------------
# The forward op's backward, so ``triton_scan.scan_directions_op`` trains (eagerly and under torch.compile)
# --------------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("sigma_ros::scan_directions_backward", mutates_args=())
def scan_directions_backward_op(gy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                                B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor,
                                bidirectional: bool, map_height: int, h_seg: torch.Tensor | None = None,
                                dt_seg: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                           torch.Tensor, torch.Tensor]:
    """``scan_directions_backward`` with du, dB and dC in float32 (the autograd below casts them)."""
    summaries = (h_seg, dt_seg) if h_seg is not None and dt_seg is not None else None
    du, ddelta, dA, dB, dC, dD, dbias = scan_directions_backward(gy, u, delta, A, B, C, D, delta_bias, bidirectional,
                                                                 map_height, summaries=summaries, input_dtypes=False)
    dA = dA if _transposed(A) else dA.contiguous()  # dA comes stored transposed (N, K*D), as the kernels write it
    return du, ddelta, dA, dB, dC, dD.to(D.dtype), dbias.to(delta_bias.dtype)


@scan_directions_backward_op.register_fake
def _(gy, u, delta, A, B, C, D, delta_bias, bidirectional, map_height, h_seg=None, dt_seg=None):
    batch, k_dirs, d_state, seq_len = B.shape
    channels_last = u.stride(-2) == 1 and u.stride(-1) != 1
    du = triton_scan._output(u, False, channels_last)
    d_bc = B.new_empty((batch, k_dirs, seq_len, d_state), dtype=torch.float32).transpose(-1, -2)
    d_a = torch.empty_like(A) if _transposed(A) else A.new_empty(A.shape)
    return (du, torch.empty_like(delta), d_a, d_bc, torch.empty_like(d_bc),
            D.new_empty(D.shape), delta_bias.new_empty(delta_bias.shape))


def _transposed(A: torch.Tensor) -> bool:
    """Whether A (K*D, N) is stored transposed, as the model stores it: then dA is returned so too, without a copy
    (the kernels read A and write dA as (N, K*D)); otherwise contiguous."""
    return A.t().is_contiguous()


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, bidirectional, _channels_last, map_height, *twins_apart = inputs
    if twins_apart and twins_apart[0] and bidirectional:
        raise ValueError("scan_directions_op: twins_apart is for inference and has no backward; training takes the "
                         "summed output (twins_apart=False)")
    summaries = output[1:] if isinstance(output, tuple) else ()  # scan_directions_train_op keeps its summaries
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, *summaries)
    ctx.bidirectional, ctx.map_height = bidirectional, map_height
    ctx.flags = len(inputs) - 7  # the op's non-tensor inputs, which get no gradient


def _backward(ctx, gy, *_summaries_grads):
    saved = ctx.saved_tensors  # once: checkpointing's unpack hooks allow one read
    return (*_input_gradients(gy, *saved[:7], ctx.bidirectional, ctx.map_height, saved[7:]), *[None] * ctx.flags)


def _input_gradients(gy, u, delta, A, B, C, D, delta_bias, bidirectional, map_height, summaries):
    """The scan's gradients in its inputs' dtypes; ``summaries``: the forward's (h_seg, dt_seg), or ()."""
    du, ddelta, dA, dB, dC, dD, dbias = scan_directions_backward_op(gy, u, delta, A, B, C, D, delta_bias,
                                                                    bidirectional, map_height, *summaries)
    # cast here, not in the op: traced by torch.compile, the casts fuse into the kernels that consume the gradients
    return du.to(u.dtype), ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dbias


triton_scan.scan_directions_op.register_autograd(_backward, setup_context=_setup_context)
triton_scan.scan_directions_train_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------------------------
# Training with delta recomputed: the blocks' delta is one GEMM of rows the scan keeps anyway
# --------------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("sigma_ros::scan_directions_train_projected", mutates_args=())
def scan_directions_train_projected_op(u: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                                       A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                                       delta_bias: torch.Tensor, bidirectional: bool, map_height: int = 0
                                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``scan_directions_train_op`` (channels-last) with delta = ``dt_low @ dt_weight.T``, computed inside the op.
    Inside, because a product traced in the graph would be merged with the backward's recomputation by
    torch.compile's common-subexpression pass, and then saved after all."""
    delta = _project_delta(dt_low, dt_weight, _delta_layout(u, dt_weight), u.dtype)
    return triton_scan.scan_directions(u, delta, A, B, C, D, delta_bias, bidirectional, True, map_height,
                                       summaries=True)


@scan_directions_train_projected_op.register_fake
def _(u, dt_low, dt_weight, A, B, C, D, delta_bias, bidirectional, map_height=0):
    delta = _project_delta(dt_low, dt_weight, _delta_layout(u, dt_weight), u.dtype)
    return triton_scan.scan_directions_train_op(u, delta, A, B, C, D, delta_bias, bidirectional, True, map_height)


def _setup_projected(ctx, inputs, output):
    u, dt_low, dt_weight, A, B, C, D, delta_bias, bidirectional, map_height = inputs
    ctx.save_for_backward(u, dt_low, dt_weight, A, B, C, D, delta_bias, *output[1:])
    ctx.bidirectional, ctx.map_height = bidirectional, map_height


def _backward_projected(ctx, gy, *_summaries_grads):
    u, dt_low, dt_weight, A, B, C, D, delta_bias, h_seg, dt_seg = ctx.saved_tensors
    layout = _delta_layout(u, dt_weight)
    delta = _project_delta(dt_low, dt_weight, layout, u.dtype)
    du, ddelta, dA, dB, dC, dD, dbias = _input_gradients(gy, u, delta, A, B, C, D, delta_bias, ctx.bidirectional,
                                                         ctx.map_height, (h_seg, dt_seg))
    batch, seq_len, k_dirs, dim = layout
    g = ddelta.permute(0, 3, 1, 2).reshape(batch * seq_len, k_dirs * dim).to(dt_low.dtype)  # the GEMM's layout
    d_dt_low = g @ dt_weight.to(dt_low.dtype)
    d_weight = (g.t() @ dt_low).to(dt_weight.dtype)
    return du, d_dt_low, d_weight, dA, dB, dC, dD, dbias, None, None


scan_directions_train_projected_op.register_autograd(_backward_projected, setup_context=_setup_projected)


def _delta_layout(u, dt_weight) -> tuple[int, int, int, int]:
    batch, _groups, dim, seq_len = u.shape
    return batch, seq_len, dt_weight.shape[0] // dim, dim


def _project_delta(dt_low, dt_weight, layout, dtype):
    """(B*L, K*R) rows x (K*D, K*R) weight -> delta (B, K, D, L), a view of the (B*L, K*D) product (in dt_low's
    dtype, as autocast computes it; then ``dtype``, the scan inputs')."""
    batch, seq_len, k_dirs, dim = layout
    delta = torch.nn.functional.linear(dt_low, dt_weight.to(dt_low.dtype)).to(dtype)
    return delta.view(batch, seq_len, k_dirs, dim).permute(0, 2, 3, 1)


def scan_directions_train_projected(u, dt_low, dt_weight, A, B, C, D, delta_bias, bidirectional: bool,
                                    map_height: int = 0) -> torch.Tensor:
    """:func:`triton_scan.scan_directions_train` (channels-last) with delta = ``dt_low @ dt_weight.T`` viewed as
    (batch, K, dim, L): dt_low (batch * L, K * R) rows in token order, dt_weight (K * dim, K * R). The training
    blocks' delta is that product, and its inputs are smaller than delta (K*R values a token against K*D, R = D/8
    or less) and kept anyway (dt_low is a view of the x projection's output, which the scan keeps for B and C), so
    the backward recomputes delta instead of saving it. For Sigma-T at batch 8 and 480x640 (bf16) the deltas of its
    SS2D and ConMB scans come to about 4.7 GB (encoder 2.6, decoder 1.7, ConMB 0.4, by arithmetic); each costs one
    more small GEMM in the backward instead."""
    return scan_directions_train_projected_op(u, dt_low, dt_weight, A, B, C, D, delta_bias, bidirectional,
                                              map_height)[0]
