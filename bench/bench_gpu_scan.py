"""The scans of one Sigma forward: mamba-ssm on flipped copies against the fused Triton kernel, in one run.

    python bench/bench_gpu_scan.py [--variant tiny] [--size 640x480] [--sweep] [--golden PATH] [--json OUT.json]

Records every scan call a batch-1 forward makes (shape, directions, d_state), then for each distinct call times the
unfused path (cat/flip copies + mamba-ssm's kernel + flip back, as the model ran before the fused kernel) and the
fused kernel on random bf16 inputs of that shape, each replayed as a CUDA graph. Reports the error of the fused
kernel against the unfused fp32 path, and per forward the summed scan time of both. ``--sweep`` also times a grid
of (BLOCK_D, segments, num_warps, steps) per call to tune ``ops.triton_scan.pick_config``. ``--golden`` checks the
authors' golden case A through the fast fp32 path with fused scans.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import statistics
import sys
import time

import numpy as np
import torch

import sigma_ros.model.sigma as sigma_module
from sigma_ros.model import SigmaConfig, build_sigma
from sigma_ros.model.fast import build_fast_forward
from sigma_ros.ops import triton_scan


def graph_ms(fn, iters: int = 50) -> float:
    """Median ms of fn() replayed as a CUDA graph (no launch gaps, as in the fast path)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(5):
        graph.replay()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def record_calls(model, rgb, x) -> collections.Counter:
    calls = collections.Counter()
    original = sigma_module.scan_directions

    def spy(u, delta, A, B, C, D, delta_bias, bidirectional, *rest):
        calls[(tuple(u.shape), delta.shape[1], A.shape[1], bidirectional)] += 1
        return original(u, delta, A, B, C, D, delta_bias, bidirectional, *rest)

    sigma_module.scan_directions = spy
    try:
        with torch.inference_mode():
            model(rgb, x)
    finally:
        sigma_module.scan_directions = original
    return calls


def make_inputs(shape, k, n, dtype, dev, seed=0):
    b, g, d, seq_len = shape
    gen = torch.Generator(device=dev).manual_seed(seed)
    rand = lambda *s: torch.randn(*s, device=dev, generator=gen)  # noqa: E731
    x_dbl = rand(b, k, 6 + 2 * n, seq_len).to(dtype)  # B and C as strided views of one projection, as in the model
    return (rand(b, g, d, seq_len).to(dtype), (0.5 * rand(b, k, d, seq_len) - 1).to(dtype),
            -torch.exp(rand(k * d, n).clamp(-2, 2)), x_dbl[:, :, 6:6 + n], x_dbl[:, :, 6 + n:], rand(k * d),
            0.5 * rand(k * d))


def channels_last(inputs):
    """The same values stored (batch, ..., L, dim/N): the layout channels-last activations give."""
    return [t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() == 4 else t for t in inputs]


def unfused(args, bidirectional, low_precision=True):
    with sigma_module.low_precision_scan_inputs(low_precision):
        return sigma_module.scan_directions(*args, bidirectional)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-budget-s", type=float, default=150.0, help="stop sweeping after this long")
    ap.add_argument("--golden", help="sigma_golden_a.npz: check the fast fp32 path with fused scans against it")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available() or not triton_scan.triton_available():
        print("needs a CUDA device and triton", file=sys.stderr)
        return 1
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    out = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "calls": []}

    if args.golden:
        z = np.load(args.golden)
        state = {k.removeprefix("state_dict/"): torch.from_numpy(np.asarray(z[k], np.float32))
                 for k in z.files if k.startswith("state_dict/")}
        model = build_sigma(SigmaConfig(embed_dim=32, depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1), num_classes=9))
        model.load_state_dict(state)
        model = model.to(dev).eval()
        rgb, x = (torch.from_numpy(np.asarray(z[k], np.float32)).to(dev) for k in ("input/rgb", "input/x"))
        expected = torch.from_numpy(np.asarray(z["output/logits"], np.float32))
        for fused in (False, True):
            with torch.inference_mode():
                logits = build_fast_forward(model, torch.float32, fused_scan=fused)(rgb, x)
            diff = (logits.cpu() - expected).abs().max().item()
            out[f"golden_a_fast_fp32_{'fused' if fused else 'mamba'}_max_abs_diff"] = diff
            print(f"golden A, fast fp32, {'fused' if fused else 'mamba-ssm'} scans: max |diff| {diff:.2e}")

    w, h = (int(v) for v in args.size.split("x"))
    model = build_sigma(SigmaConfig.from_variant(args.variant, num_classes=9)).to(dev).eval()
    calls = record_calls(model, torch.randn(1, 3, h, w, device=dev), torch.randn(1, 3, h, w, device=dev))
    del model
    total_unfused = total_fused = total_best = 0.0
    print(f"\n{'u shape':22} {'K':>2} {'N':>2} {'calls':>5} {'unfused':>9} {'fused':>9} {'ch-last':>9} {'rel err':>8}  "
          "config (BLOCK_D, segments, warps, steps)")
    deadline = time.perf_counter() + args.sweep_budget_s
    for (shape, k, n, bidirectional), count in sorted(calls.items(), key=lambda c: -np.prod(c[0][0]) * c[0][2]):
        inputs = make_inputs(shape, k, n, torch.bfloat16, dev)
        with torch.inference_mode():
            reference = unfused([t.float() if t.is_floating_point() else t for t in inputs], bidirectional, False)
            fused_out = triton_scan.scan_directions(*inputs, bidirectional)
            err = ((fused_out - reference.float()).norm() / reference.float().norm()).item()
            t_unfused = graph_ms(lambda: unfused(inputs, bidirectional))
            t_fused = graph_ms(lambda: triton_scan.scan_directions(*inputs, bidirectional))
            last = channels_last(inputs)
            t_fused_last = graph_ms(lambda: triton_scan.scan_directions(*last, bidirectional, channels_last=True))
        config = triton_scan.pick_config(shape[0] * k, shape[2], shape[3], n)
        row = {"u_shape": shape, "directions": k, "d_state": n, "bidirectional": bidirectional, "calls": count,
               "unfused_ms": t_unfused, "fused_ms": t_fused, "fused_channels_last_ms": t_fused_last,
               "fused_rel_err": err, "config": config}
        if args.sweep and time.perf_counter() < deadline:
            best = (t_fused_last, config)
            for bd, steps in itertools.product((16, 32), (2, 4)):
                if n >= 16 and steps == 4 and bd == 32:
                    continue  # 247 registers: too few warps
                segs = triton_scan.pick_segments(shape[0] * k, shape[2], shape[3], bd)
                for segments in sorted({segs, min(128, 2 * segs, max(1, shape[3] // 16))}):
                    with torch.inference_mode():
                        t = graph_ms(lambda: triton_scan.scan_directions(
                            *last, bidirectional, channels_last=True, config=(bd, segments, 1, steps)), iters=20)
                    best = min(best, (t, (bd, segments, 1, steps)))
            row["best_ms"], row["best_config"] = best
            total_best += count * best[0]
        else:
            total_best += count * min(t_fused, t_fused_last)
        total_unfused += count * t_unfused
        total_fused += count * t_fused
        out["calls"].append(row)
        print(f"{str(shape):22} {k:2d} {n:2d} {count:5d} {t_unfused:7.3f}ms {t_fused:7.3f}ms {t_fused_last:7.3f}ms "
              f"{err:8.1e}  {row['config']}" + (f"  best {row['best_config']} {row['best_ms']:.3f}ms"
                                                if "best_ms" in row else ""), flush=True)
    out.update(scan_ms_per_forward_unfused=total_unfused, scan_ms_per_forward_fused=total_fused)
    print(f"\nper Sigma-{args.variant} forward: unfused scans {total_unfused:.2f} ms, fused {total_fused:.2f} ms, "
          f"fused at the best layout/config measured {total_best:.2f} ms")
    out["scan_ms_per_forward_best"] = total_best
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
