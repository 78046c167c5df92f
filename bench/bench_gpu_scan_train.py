"""The scans of one training step: forward + backward through mamba-ssm on flipped copies (``--no-triton-scans``)
against the fused Triton scan and its backward (trainer option ``triton_scans``, the GPU default), in one run.

    python bench/bench_gpu_scan_train.py [--variant tiny] [--size 480x640] [--batch 8] [--sweep] [--json OUT.json]

Records every scan call a training forward makes with ``triton_training_scans`` on (its inputs as the model lays
them out: SS2D's row-major tokens read in both orders, the fusion blocks' (batch, dim, L) sequences), then for each
distinct call times, with CUDA events, forward and backward of

- **mamba**: the same values through the path the trainer takes without the option (cat/flip copies, mamba-ssm's
  selective_scan forward and backward, flips back), inputs in bf16 as with ``scan_bf16``;
- **triton**: ``ops.triton_scan.scan_directions`` and ``ops.triton_scan_backward.scan_directions_backward``;

and reports the relative difference of every gradient between the two. The totals weight each call by how often a
step makes it. ``--sweep`` also times the backward over a grid of (BLOCK_D, segment length, chunk, programs) per
call, next to the default configuration's backward, to tune ``pick_backward_config`` (``--sweep-d-state 4``: only
the calls of that state size).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time

import torch

import sigma_ros.model.sigma as sigma_module
from sigma_ros.model import SigmaConfig, build_sigma
from sigma_ros.ops import triton_scan, triton_scan_backward

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def record_calls(model, rgb, x) -> tuple[collections.Counter, dict]:
    """(count per call key, the first call's inputs per key) of one training forward with Triton scans."""
    counts, inputs = collections.Counter(), {}
    original = triton_scan.scan_directions

    def spy(u, delta, A, B, C, D, delta_bias, bidirectional, channels_last=False, map_height=0, config=None,
            summaries=False):
        key = (tuple(u.shape), delta.shape[1], A.shape[1], bidirectional, map_height)
        counts[key] += 1
        if key not in inputs:
            # the tensors themselves (kept alive here): the model's layouts, expansions and projection views
            inputs[key] = [t.detach() for t in (u, delta, A, B, C, D, delta_bias)] + [bidirectional, channels_last,
                                                                                       map_height]
        return original(u, delta, A, B, C, D, delta_bias, bidirectional, channels_last, map_height, config, summaries)

    triton_scan.scan_directions = spy
    try:
        with torch.autocast(rgb.device.type, dtype=torch.bfloat16), sigma_module.low_precision_scan_inputs(True), \
                sigma_module.triton_training_scans(True):
            model(rgb, x)
    finally:
        triton_scan.scan_directions = original
    return counts, inputs


def timed(fn, iters: int) -> float:
    """Median ms of fn(): CUDA events on the GPU, the wall clock on the CPU (``--cpu-smoke``)."""
    fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def mamba_path(args, gy):
    """Forward + backward as the trainer runs them without ``triton_scans``: (fwd ms fn, fwd+bwd fn, grads fn)."""
    u, delta, A, B, C, D, bias, bidirectional, _channels_last, map_height = args
    if map_height:  # the model's generic SS2D path scans explicit row- and column-order copies
        b, _, d, seq_len = u.shape
        w = seq_len // map_height

        def cols(t):  # (batch, K', dim, L) row-major positions -> column-major
            return t.reshape(*t.shape[:-1], map_height, w).transpose(-1, -2).reshape(t.shape)

        u = torch.stack([u[:, 0], cols(u[:, 1])], 1).contiguous()
        delta = torch.stack([cols(t) if k % 2 else t for k, t in enumerate(delta.unbind(1))], 1).contiguous()
        B = torch.stack([cols(t) if k % 2 else t for k, t in enumerate(B.unbind(1))], 1).contiguous()
        C = torch.stack([cols(t) if k % 2 else t for k, t in enumerate(C.unbind(1))], 1).contiguous()
        gy = torch.stack([gy[:, 0], cols(gy[:, 1])], 1)
    leaves = [t.detach().contiguous().requires_grad_(True) for t in (u, delta, A, B, C, D, bias)]

    def forward():
        with sigma_module.low_precision_scan_inputs(True):
            return sigma_module.scan_directions(*leaves, bidirectional)

    def both():
        return torch.autograd.grad(forward(), leaves, gy)

    return forward, both, both


def triton_path(args, gy, config=None):
    """As in training, ``both`` hands the forward's segment summaries to the backward; ``backward`` alone
    summarises its own segments (as it must for a ``config`` that cuts others)."""
    u, delta, A, B, C, D, bias, bidirectional, channels_last, map_height = args

    def forward():
        return triton_scan.scan_directions(u, delta, A, B, C, D, bias, bidirectional, channels_last, map_height,
                                           summaries=True)

    def backward(summaries=None):
        return triton_scan_backward.scan_directions_backward(gy, u, delta, A, B, C, D, bias, bidirectional,
                                                             map_height, config=config, summaries=summaries)

    def both():
        return backward(forward()[1:])

    return forward, both, backward


def sweep_configs(batch_dirs, dim, seq_len, n):
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    configs = []
    for block_d in ((16, 32) if n >= 8 else (16, 32, 64)):
        for chunk in ((8, 16, 32) if n >= 16 else (16, 32, 64)):
            for per_sm in (4, 8, 16):
                for warps_per_sm in (24, 48):
                    segments = triton_scan.pick_segments(batch_dirs, dim, seq_len, block_d, warps_per_sm)
                    seg_len = -(-(-(-seq_len // segments)) // chunk) * chunk
                    configs.append((block_d, seg_len, chunk, per_sm * sms))
    return configs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", default="480x640")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-budget-s", type=float, default=200.0)
    ap.add_argument("--sweep-d-state", type=int, default=None, help="sweep only the calls of this state size")
    ap.add_argument("--json")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="micro model, 32x48, batch 1 on the CPU through Triton's interpreter: checks the script")
    args = ap.parse_args()
    if args.cpu_smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("bench_gpu_scan_train: --cpu-smoke needs TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        args.variant, args.size, args.batch, args.iters, args.sweep = "micro", "32x48", 1, 1, False
    elif not torch.cuda.is_available():
        print("bench_gpu_scan_train: needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
        return 2
    from sigma_ros.ops.selective_scan import describe_backend

    dev = torch.device("cpu" if args.cpu_smoke else "cuda")
    device_name = "CPU (Triton interpreter)" if args.cpu_smoke else torch.cuda.get_device_name(0)
    h, w = (int(v) for v in args.size.split("x"))
    print(f"device: {device_name}, torch {torch.__version__}, mamba path: {describe_backend(dev)}, "
          f"Sigma-{args.variant} {h}x{w}, batch {args.batch}", flush=True)
    torch.manual_seed(0)
    model = build_sigma(SigmaConfig.from_variant(args.variant, num_classes=9)).to(dev).train()
    rgb, x = torch.randn(args.batch, 3, h, w, device=dev), torch.randn(args.batch, 3, h, w, device=dev)
    counts, inputs = record_calls(model, rgb, x)
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    totals = collections.Counter()
    rows = []
    sweep_end = time.time() + args.sweep_budget_s
    for key, call in inputs.items():
        shape, k, n, bidirectional, map_height = key
        gy = torch.randn(shape, device=dev)
        m_fwd, m_both, m_grads = mamba_path(call, gy)
        t_fwd, t_both, t_bwd = triton_path(call, gy)
        row = dict(shape=shape, directions=k, d_state=n, map_height=map_height, count=counts[key],
                   mamba_fwd_ms=timed(m_fwd, args.iters), mamba_fwd_bwd_ms=timed(m_both, args.iters),
                   triton_fwd_ms=timed(t_fwd, args.iters), triton_fwd_bwd_ms=timed(t_both, args.iters))
        want = m_grads()
        got = t_both()
        if map_height:  # compare at row-major positions: sum the mamba path's two orders back
            row["grad_rel_err"] = {name: round(((g.float() - e.float()).norm() / e.float().norm()).item(), 5)
                                   for name, g, e in zip(NAMES[2:], got[2:], want[2:]) if name in ("A", "D",
                                                                                                  "delta_bias")}
        else:
            row["grad_rel_err"] = {name: round(((g.float() - e.float()).norm() / e.float().norm()).item(), 5)
                                   for name, g, e in zip(NAMES, got, want)}
        if args.sweep and time.time() < sweep_end and args.sweep_d_state in (None, n):
            # the baseline, same run; here and in the sweep each backward summarises its own segments
            row["default_bwd_ms"] = round(timed(t_bwd, max(3, args.iters // 2)), 3)
            swept = []
            for config in sweep_configs(shape[0] * k, shape[2], shape[3], n):
                _, _, bwd = triton_path(call, gy, config)
                swept.append((round(timed(bwd, max(3, args.iters // 2)), 3), config))
            swept.sort()
            row["sweep_best_bwd"] = dict(ms=swept[0][0], config=swept[0][1])
            row["sweep_bwd"] = swept  # every (ms, config), fastest first: to fit a rule, not just a winner
        for name in ("mamba_fwd_ms", "mamba_fwd_bwd_ms", "triton_fwd_ms", "triton_fwd_bwd_ms"):
            totals[name] += row[name] * counts[key]
            row[name] = round(row[name], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("per training step (each call x its count): " + ", ".join(f"{k} {v:.1f}" for k, v in totals.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, totals=totals, device=device_name), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
