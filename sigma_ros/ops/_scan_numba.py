"""Numba CPU kernels for the selective scan (forward and backward), float32 throughout.

Layout (all C-contiguous float32): u, delta, y (batch, dim, L); A (dim, N); B, C (batch, G, N, L);
D, delta_bias (dim,). Channel d reads group g = d // (dim // G).

Each channel is processed in time chunks of ``CHUNK`` steps so the heavy parts vectorise over time:
softplus, exp(dt*A), dt*u*B and the output sum are plain SIMD loops over a chunk, and only the
recurrence h = a*h + b runs step by step (with several state rows interleaved for instruction-level
parallelism). ``exp`` and ``log1p`` are our own polynomial versions because LLVM cannot vectorise
libm calls without Intel SVML; both are within a few float32 ulps.

The backward pass is the reverse-time adjoint recurrence. The forward pass saves the state at the
start of every chunk (``hsave``), so the backward recomputes one chunk at a time from there.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

CHUNK = 128  # time steps per chunk: 3 (N, CHUNK) float32 buffers stay in L1 for N <= 16

# No 'nnan'/'ninf': a NaN in the inputs must come out as NaN (training divergence stays visible).
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}

_f = np.float32
_ZERO, _ONE, _HALF, _TWO = _f(0.0), _f(1.0), _f(0.5), _f(2.0)
_TWENTY = _f(20.0)
# exp: Cephes expf (range reduction by ln2 split in two, degree-5 polynomial), |rel err| < 3e-7.
_LOG2E = _f(1.4426950408889634)
_LN2_HI, _LN2_LO = _f(0.693359375), _f(-2.12194440e-4)
_EXP_LO, _EXP_HI = _f(-87.33654), _f(88.72283)
_P0, _P1, _P2 = _f(1.9875691500e-4), _f(1.3981999507e-3), _f(8.3334519073e-3)
_P3, _P4, _P5 = _f(4.1665795894e-2), _f(1.6666665459e-1), _f(5.0000001201e-1)
# log1p on [0, 1] as 2*atanh(s), s = x / (2 + x) <= 1/3: odd series up to s^17, |rel err| < 3e-7.
_Q0, _Q1, _Q2, _Q3, _Q4 = _f(1.0), _f(1 / 3), _f(1 / 5), _f(1 / 7), _f(1 / 9)
_Q5, _Q6, _Q7, _Q8 = _f(1 / 11), _f(1 / 13), _f(1 / 15), _f(1 / 17)


@intrinsic
def _bits_to_f32(typingctx, x):
    """Reinterpret an integer's low 32 bits as a float32 (builds 2**k for exp)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(x), codegen


@njit(inline="always", fastmath=_FM, cache=True)
def _exp(x):
    # Clamp with compares, not min/max, so a NaN stays NaN (min/max would swallow it).
    xc = _EXP_LO if x < _EXP_LO else x
    xc = _EXP_HI if xc > _EXP_HI else xc
    k = np.floor(xc * _LOG2E + _HALF)
    r = xc - k * _LN2_HI - k * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * (r * r) + r + _ONE
    scale = _bits_to_f32((np.int32(k) + np.int32(127)) << np.int32(23))
    return _ZERO if x < _EXP_LO else p * scale


@njit(inline="always", fastmath=_FM, cache=True)
def _log1p01(x):
    s = x / (_TWO + x)
    z = s * s
    p = _Q8
    p = p * z + _Q7
    p = p * z + _Q6
    p = p * z + _Q5
    p = p * z + _Q4
    p = p * z + _Q3
    p = p * z + _Q2
    p = p * z + _Q1
    p = p * z + _Q0
    return _TWO * s * p


@njit(inline="always", fastmath=_FM, cache=True)
def _softplus(v):
    # mamba's kernel: log1p(exp(v)) for v <= 20, else v. Written as max(v,0) + log1p(exp(-|v|)) to stay finite.
    sp = max(v, _ZERO) + _log1p01(_exp(-abs(v)))
    return v if v > _TWENTY else sp


# Chunk helpers take 1-D slices of the current chunk, indexed from 0: indexing with "t0 + i" makes numba
# emit negative-index wraparound checks that LLVM cannot always remove, which stops vectorisation (2x slower).
@njit(inline="always", fastmath=_FM, cache=True)
def _chunk_dt(delta_c, bias_d, softplus, dt, dsig):
    """dt[i] = softplus(delta + bias) (or the raw sum); dsig[i] = d dt / d(delta + bias)."""
    tn = delta_c.shape[0]
    if softplus:
        for i in range(tn):
            v = delta_c[i] + bias_d
            dt[i] = _softplus(v)
            dsig[i] = _ONE if v > _TWENTY else _ONE / (_ONE + _exp(-v))
    else:
        for i in range(tn):
            dt[i] = delta_c[i] + bias_d
            dsig[i] = _ONE


@njit(inline="always", fastmath=_FM, cache=True)
def _chunk_coeffs(a, u_c, Bg, t0, dt, dA, X):
    """dA[n, i] = exp(dt_i * A_n), X[n, i] = dt_i * u_i * B[n, t0 + i] for one chunk (SIMD over i)."""
    tn = u_c.shape[0]
    for n in range(a.shape[0]):
        an = a[n]
        b_c = Bg[n][t0:t0 + tn]
        for i in range(tn):
            dA[n, i] = _exp(dt[i] * an)
            X[n, i] = dt[i] * u_c[i] * b_c[i]


@njit(inline="always", fastmath=_FM, cache=True)
def _chunk_recurrence(h, dA, X, H, tn):
    """H[n, i+1] = dA[n, i] * H[n, i] + X[n, i] with H[n, 0] = h[n]; h <- last state.

    Four state rows are advanced together so four independent FMA chains overlap.
    """
    N = h.shape[0]
    n = 0
    while n + 4 <= N:
        h0, h1, h2, h3 = h[n], h[n + 1], h[n + 2], h[n + 3]
        H[n, 0], H[n + 1, 0], H[n + 2, 0], H[n + 3, 0] = h0, h1, h2, h3
        for i in range(tn):
            h0 = dA[n, i] * h0 + X[n, i]
            h1 = dA[n + 1, i] * h1 + X[n + 1, i]
            h2 = dA[n + 2, i] * h2 + X[n + 2, i]
            h3 = dA[n + 3, i] * h3 + X[n + 3, i]
            H[n, i + 1] = h0
            H[n + 1, i + 1] = h1
            H[n + 2, i + 1] = h2
            H[n + 3, i + 1] = h3
        h[n], h[n + 1], h[n + 2], h[n + 3] = h0, h1, h2, h3
        n += 4
    while n < N:
        h0 = h[n]
        H[n, 0] = h0
        for i in range(tn):
            h0 = dA[n, i] * h0 + X[n, i]
            H[n, i + 1] = h0
        h[n] = h0
        n += 1


def _task_channels(task, G, nsplit, per_group):
    """Task -> (batch b, group g, split s, first channel, end channel)."""
    b = task // (G * nsplit)
    rest = task - b * G * nsplit
    g = rest // nsplit
    s = rest - g * nsplit
    lo = g * per_group + (s * per_group) // nsplit
    hi = g * per_group + ((s + 1) * per_group) // nsplit
    return b, g, s, lo, hi


_task_channels = njit(inline="always", cache=True)(_task_channels)


@njit(parallel=True, fastmath=_FM, cache=True)
def scan_fwd(u, delta, A, B, C, D, bias, softplus, nsplit, y, hsave, reverse_from):
    """y = selective scan; if hsave has chunks, hsave[b, d, c] = state before chunk c (for backward).

    Task (b, g, s) runs the s-th of nsplit slices of group g's channels. Its loop is chunk-major (all its
    channels advance one chunk, then the next) so the group's B/C chunk stays in cache across channels.

    Groups g >= ``reverse_from`` scan their sequences reversed, in place (inference; Sigma's reversed directions):
    each chunk of u, delta, B and C is copied reversed into a buffer in cache, and its outputs go back to their
    own positions, so y stays in base order. u may hold fewer channels than delta (a direction's base sequence
    is channel d % u.shape[1]: one u serves a sequence and its reversed twin).
    """
    nb, nd, L = delta.shape
    G, N = B.shape[1], A.shape[1]
    nd_u = u.shape[1]
    per_group = nd // G
    nchunks = (L + CHUNK - 1) // CHUNK
    save = hsave.shape[2] > 0
    for task in prange(nb * G * nsplit):
        b, g, s, lo, hi = _task_channels(task, G, nsplit, per_group)
        reverse = g >= reverse_from
        Bg, Cg = B[b, g], C[b, g]
        dt = np.empty(CHUNK, np.float32)
        dsig = np.empty(CHUNK, np.float32)
        dA = np.empty((N, CHUNK), np.float32)
        X = np.empty((N, CHUNK), np.float32)
        H = np.empty((N, CHUNK + 1), np.float32)
        acc = np.empty(CHUNK, np.float32)
        u_rev = np.empty(CHUNK, np.float32)
        delta_rev = np.empty(CHUNK, np.float32)
        B_rev = np.empty((N, CHUNK), np.float32)
        C_rev = np.empty((N, CHUNK), np.float32)
        states = np.zeros((hi - lo, N), np.float32)
        for c in range(nchunks):
            t0 = c * CHUNK
            t1 = min(L, t0 + CHUNK)
            tn = t1 - t0
            last = L - 1 - t0  # a reversed chunk's step i sits at position last - i
            if reverse:
                for n in range(N):
                    for i in range(tn):
                        B_rev[n, i] = Bg[n, last - i]
                        C_rev[n, i] = Cg[n, last - i]
                Bc, Cc, tc = B_rev, C_rev, 0
            else:
                Bc, Cc, tc = Bg, Cg, t0
            for d in range(lo, hi):
                h = states[d - lo]
                if reverse:
                    for i in range(tn):
                        u_rev[i] = u[b, d % nd_u, last - i]
                        delta_rev[i] = delta[b, d, last - i]
                    u_c, delta_c = u_rev[:tn], delta_rev[:tn]
                else:
                    u_c, delta_c = u[b, d % nd_u][t0:t1], delta[b, d][t0:t1]
                if save:
                    for n in range(N):
                        hsave[b, d, c, n] = h[n]
                _chunk_dt(delta_c, bias[d], softplus, dt, dsig)
                _chunk_coeffs(A[d], u_c, Bc, tc, dt, dA, X)
                _chunk_recurrence(h, dA, X, H, tn)
                Dd = D[d]
                for i in range(tn):
                    acc[i] = Dd * u_c[i]
                for n in range(N):
                    c_c = Cc[n][tc:tc + tn]
                    for i in range(tn):
                        acc[i] += c_c[i] * H[n, i + 1]
                if reverse:
                    y_d = y[b, d]
                    for i in range(tn):
                        y_d[last - i] = acc[i]
                else:
                    y_c = y[b, d][t0:t1]
                    for i in range(tn):
                        y_c[i] = acc[i]


@njit(parallel=True, fastmath=_FM, cache=True)
def scan_bwd(u, delta, A, B, C, D, bias, softplus, hsave, dy, nsplit,
             du, ddelta, dA_part, dB_part, dC_part, dD_part, dbias_part):
    """Gradients of the scan. Outputs (all pre-allocated):

    du, ddelta (batch, dim, L) float32, written;
    dA_part (batch, dim, N), dD_part, dbias_part (batch, dim) float64, written (caller sums over batch);
    dB_part, dC_part (batch, G, nsplit, N, L) float32, zero on entry (caller sums over nsplit).
    Tasks as in scan_fwd; each owns its dB/dC slice, so the sums over a group's channels never race.
    """
    nb, nd, L = u.shape
    G, N = B.shape[1], A.shape[1]
    per_group = nd // G
    nchunks = (L + CHUNK - 1) // CHUNK
    for task in prange(nb * G * nsplit):
        b, g, s, lo, hi = _task_channels(task, G, nsplit, per_group)
        Bg, Cg = B[b, g], C[b, g]
        dBg, dCg = dB_part[b, g, s], dC_part[b, g, s]
        dt = np.empty(CHUNK, np.float32)
        dsig = np.empty(CHUNK, np.float32)
        dA = np.empty((N, CHUNK), np.float32)
        X = np.empty((N, CHUNK), np.float32)
        H = np.empty((N, CHUNK + 1), np.float32)
        S = np.empty((N, CHUNK), np.float32)
        ddt = np.empty(CHUNK, np.float32)
        dus = np.empty(CHUNK, np.float32)
        dtu = np.empty(CHUNK, np.float32)
        h = np.empty(N, np.float32)
        carries = np.zeros((hi - lo, N), np.float32)  # a_{t+1} * s_{t+1} at the chunk end, per channel
        dA_acc = np.zeros((hi - lo, N), np.float64)
        dD_acc = np.zeros(hi - lo, np.float64)
        dbias_acc = np.zeros(hi - lo, np.float64)
        for cc in range(nchunks):
            c = nchunks - 1 - cc
            t0 = c * CHUNK
            t1 = min(L, t0 + CHUNK)
            tn = t1 - t0
            for d in range(lo, hi):
                a = A[d]
                carry = carries[d - lo]
                u_c, dy_c = u[b, d][t0:t1], dy[b, d][t0:t1]
                # Recompute this chunk's forward states from the saved chunk-start state.
                for n in range(N):
                    h[n] = hsave[b, d, c, n]
                _chunk_dt(delta[b, d][t0:t1], bias[d], softplus, dt, dsig)
                _chunk_coeffs(a, u_c, Bg, t0, dt, dA, X)
                _chunk_recurrence(h, dA, X, H, tn)
                # Adjoint S[n, i] = dL/dh_t: s_t = dy_t * C_t + a_{t+1} * s_{t+1}, run backwards in time.
                for n in range(N):  # X <- dy * C
                    c_c = Cg[n][t0:t1]
                    for i in range(tn):
                        X[n, i] = dy_c[i] * c_c[i]
                n = 0
                while n + 4 <= N:
                    s0, s1, s2, s3 = carry[n], carry[n + 1], carry[n + 2], carry[n + 3]
                    for k in range(tn):
                        i = tn - 1 - k
                        s0 += X[n, i]
                        s1 += X[n + 1, i]
                        s2 += X[n + 2, i]
                        s3 += X[n + 3, i]
                        S[n, i] = s0
                        S[n + 1, i] = s1
                        S[n + 2, i] = s2
                        S[n + 3, i] = s3
                        s0 *= dA[n, i]
                        s1 *= dA[n + 1, i]
                        s2 *= dA[n + 2, i]
                        s3 *= dA[n + 3, i]
                    carry[n], carry[n + 1], carry[n + 2], carry[n + 3] = s0, s1, s2, s3
                    n += 4
                while n < N:
                    s0 = carry[n]
                    for k in range(tn):
                        i = tn - 1 - k
                        s0 += X[n, i]
                        S[n, i] = s0
                        s0 *= dA[n, i]
                    carry[n] = s0
                    n += 1
                # Everything else is elementwise over the chunk (short loops: few arrays each, so they vectorise).
                for i in range(tn):
                    ddt[i] = _ZERO
                    dus[i] = _ZERO
                    dtu[i] = dt[i] * u_c[i]
                for n in range(N):
                    an = a[n]
                    S_n, dA_n, H_n = S[n], dA[n], H[n]
                    b_c, db_c, dc_c = Bg[n][t0:t1], dBg[n][t0:t1], dCg[n][t0:t1]
                    da_sum = _ZERO
                    for i in range(tn):
                        w = S_n[i] * dA_n[i] * H_n[i]  # s_t * a_t * h_{t-1}
                        da_sum += w * dt[i]
                        ddt[i] += an * w
                    for i in range(tn):
                        dus[i] += S_n[i] * b_c[i]
                    for i in range(tn):
                        db_c[i] += S_n[i] * dtu[i]
                    for i in range(tn):
                        dc_c[i] += dy_c[i] * H_n[i + 1]
                    dA_acc[d - lo, n] += da_sum
                du_c, ddelta_c = du[b, d][t0:t1], ddelta[b, d][t0:t1]
                Dd = D[d]
                dd_sum = _ZERO
                db_sum = _ZERO
                for i in range(tn):
                    gy = dy_c[i]
                    du_c[i] = dt[i] * dus[i] + Dd * gy
                    g_delta = (ddt[i] + dus[i] * u_c[i]) * dsig[i]
                    ddelta_c[i] = g_delta
                    dd_sum += gy * u_c[i]
                    db_sum += g_delta
                dD_acc[d - lo] += dd_sum
                dbias_acc[d - lo] += db_sum
        for d in range(lo, hi):
            for n in range(N):
                dA_part[b, d, n] = dA_acc[d - lo, n]
            dD_part[b, d] = dD_acc[d - lo]
            dbias_part[b, d] = dbias_acc[d - lo]
