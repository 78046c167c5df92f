"""CPU selective-scan benchmark: the PyTorch reference loop vs the numba backend, at Sigma-like shapes.

    python bench/bench_scan_cpu.py                 # default shapes, torch's thread count
    python bench/bench_scan_cpu.py --threads 1     # single thread
    python bench/bench_scan_cpu.py --quick         # small shapes (smoke test)

Shapes follow Sigma at 480x640 input: u (1, K*D, L) with K scan directions sharing grouped B/C (G=K=4).
Inputs are in the trained-model regime: dt = softplus(0.5*N(0,1) + b), b for dt in [1e-3, 0.1], A = -(1..N).
Times are the minimum over --reps runs (wall clock and process CPU time); the first call (numba compile or
cache load) is not timed. On a shared machine wall times vary; CPU time is the steadier figure.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from sigma_ros.ops.selective_scan import describe_backend, selective_scan

from machine import cpu_name  # bench/machine.py (scripts run from bench/)

FWD_SHAPES = [  # (batch, dim = K*D, L, N, G): encoder stage 1 / stage 3 scans, and a d_state=4 (fusion/decoder) scan
    (1, 768, 19200, 16, 4),
    (1, 3072, 1200, 16, 4),
    (1, 768, 19200, 4, 4),
]
BWD_SHAPES = [(1, 768, 4800, 16, 4)]
QUICK_FWD = [(1, 64, 2000, 16, 4), (1, 64, 2000, 4, 4)]
QUICK_BWD = [(1, 32, 500, 16, 4)]


def make_inputs(batch, dim, length, n, groups, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, dim, length, generator=g)
    delta = 0.5 * torch.randn(batch, dim, length, generator=g)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(dim, 1)
    B = torch.randn(batch, groups, n, length, generator=g)
    C = torch.randn(batch, groups, n, length, generator=g)
    D = torch.ones(dim)
    dt = torch.exp(torch.rand(dim, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    bias = dt + torch.log(-torch.expm1(-dt))  # softplus^-1
    tensors = [u, delta, A, B, C, D, bias]
    if requires_grad:
        tensors = [t.requires_grad_(True) for t in tensors]
    return tensors


def timed(fn, reps: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def fwd_fn(args, backend):
    def run():
        with torch.no_grad():
            return selective_scan(*args[:5], args[5], args[6], delta_softplus=True, backend=backend)
    return run


def fwd_bwd_fn(args, backend):
    def run():
        for t in args:
            t.grad = None
        y = selective_scan(*args[:5], args[5], args[6], delta_softplus=True, backend=backend)
        y.backward(torch.ones_like(y))
        return y
    return run


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch/numba threads (default: torch's default)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs of the numba backend (reference: 2)")
    ap.add_argument("--quick", action="store_true", help="small shapes only (smoke test)")
    ap.add_argument("--skip-reference", action="store_true", help="time only the numba backend")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import numba

    fwd_shapes, bwd_shapes = (QUICK_FWD, QUICK_BWD) if args.quick else (FWD_SHAPES, BWD_SHAPES)
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} threads used")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numba {numba.__version__}; "
          f"backend: {describe_backend('cpu', 'cpu')}")
    if hasattr(os, "getloadavg"):
        print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
    rows = []
    for kind, shapes in (("fwd", fwd_shapes), ("fwd+bwd", bwd_shapes)):
        for shape in shapes:
            print(f"timing {kind} {shape} ...", flush=True)
            inputs = make_inputs(*shape, requires_grad=(kind == "fwd+bwd"))
            make = fwd_fn if kind == "fwd" else fwd_bwd_fn
            y_cpu = make(inputs, "cpu")()  # compile / cache load, untimed
            grads_cpu = [t.grad.clone() for t in inputs] if kind == "fwd+bwd" else None
            w_cpu, c_cpu = timed(make(inputs, "cpu"), args.reps)
            w_ref = c_ref = err = float("nan")
            if not args.skip_reference:
                y_ref = make(inputs, "reference")()  # warm-up run, also the accuracy check
                err = rel_err(y_cpu, y_ref)
                if kind == "fwd+bwd":
                    err = max([err] + [rel_err(gc, t.grad) for gc, t in zip(grads_cpu, inputs)])
                del y_ref
                w_ref, c_ref = timed(make(inputs, "reference"), 1)
            rows.append((kind, shape, w_ref, c_ref, w_cpu, c_cpu, err))

    head = ("pass", "shape (B, K*D, L, N, G)", "torch loop wall s", "cpu s", "numba wall s", "cpu s",
            "speedup (wall)", "max rel err")
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for kind, shape, w_ref, c_ref, w_cpu, c_cpu, err in rows:
        print(f"| {kind} | {shape} | {w_ref:.3f} | {c_ref:.3f} | {w_cpu:.3f} | {c_cpu:.3f} | "
              f"{w_ref / w_cpu:.1f}x | {err:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
