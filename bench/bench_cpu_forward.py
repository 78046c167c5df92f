"""Sigma forward on the CPU, fp32, batch 1, against plain matrix products of the same FLOP count, in one run.

    python bench/bench_cpu_forward.py [--variant tiny] [--size 640x480] [--repeats 3] [--threads N]

The ratio (model time / matmul time) says how far the model is from the CPU's dense-math speed: the scans and the
memory-bound work between GEMMs are what the ratio measures. Target for Sigma-T at 640x480 on the 2-core CI CPU:
<= 6 s per pair.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from sigma_ros.model import SigmaConfig, build_sigma
from sigma_ros.ops.selective_scan import describe_backend
from sigma_ros.tools.info import count_flops

from machine import cpu_name  # bench/machine.py (scripts run from bench/)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", default="640x480", help="WxH")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    cfg = SigmaConfig.from_variant(args.variant, num_classes=9)
    torch.manual_seed(0)
    model = build_sigma(cfg).eval()
    rgb, x = torch.randn(1, 3, h, w), torch.randn(1, 3, h, w)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), scan: {describe_backend('cpu')}, load average {os.getloadavg()[0]:.1f}")
    with torch.inference_mode():
        model(rgb[..., :64, :64], x[..., :64, :64])  # JIT-compile the scan kernels outside the timing
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            model(rgb, x)
            times.append(time.perf_counter() - t)
    forward = statistics.median(times)
    flops = count_flops(cfg, h, w)
    gemm_flop = 2e9 * flops["counted_gmacs"]  # multiply-adds of the model's GEMMs/convs, as FLOPs
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    reps = max(1, round(gemm_flop / (2 * n**3)))
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    matmul = time.perf_counter() - t
    print(f"Sigma-{cfg.variant} forward, {w}x{h}, batch 1, fp32: median {forward:.2f} s "
          f"(runs: {', '.join(f'{v:.2f}' for v in times)}); target <= 6 s: {'PASS' if forward <= 6 else 'FAIL'}")
    print(f"plain matmuls of the same {gemm_flop / 1e9:.0f} GFLOP ({reps} x {n}^3): {matmul:.2f} s "
          f"({gemm_flop / matmul / 1e9:.0f} GFLOP/s)")
    print(f"ratio model / matmul: {forward / matmul:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
