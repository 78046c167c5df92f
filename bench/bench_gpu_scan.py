"""The scans of one Sigma forward: mamba-ssm on flipped copies against the fused Triton kernel, in one run.

    python bench/bench_gpu_scan.py [--variant tiny] [--size 640x480] [--sweep] [--golden PATH] [--json OUT.json]
                                   [--compare-with OLD_triton_scan.py]

Records every scan call a batch-1 forward makes (shape, directions, d_state), then for each distinct call times the
unfused path (cat/flip copies + mamba-ssm's kernel + flip back, as the model ran before the fused kernel) and the
fused kernel on random bf16 inputs of that shape, each replayed as a CUDA graph: on plain and channels-last copies,
and on the layout the model hands it ("model layout": SS2D's one row-major tensor read in both orders, the other
blocks' channels-last tokens, and the step sizes ready, bias and softplus taken by ``ops.triton_delta``; also with
bias and softplus left to the kernel, as before that op). Reports the error of the fused kernel against the
unfused fp32 path, and per forward the summed scan time. ``--sweep`` also times a grid of (BLOCK_D, segments,
num_warps, steps) per call, on the model's layout, to tune ``ops.triton_scan.pick_config``. ``--golden`` checks the
authors' golden case A through the fast fp32 path with fused scans. ``--compare-with`` also times another version
of the kernel's module at its own default configuration on the model's layout, in the same run (for instance the
previous commit's: ``git show HEAD~1:sigma_ros/ops/triton_scan.py > /tmp/old_scan.py``).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
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
    bc = rand(b, k, 2 * n, seq_len).to(dtype)  # B and C as views of one projection, as in the model
    return (rand(b, g, d, seq_len).to(dtype), (0.5 * rand(b, k, d, seq_len) - 1).to(dtype),
            -torch.exp(rand(k * d, n).clamp(-2, 2)), bc[:, :, :n], bc[:, :, n:], rand(k * d), 0.5 * rand(k * d))


def channels_last(inputs):
    """The same values stored (batch, ..., L, dim/N), as channels-last activations give: B and C stay views of one
    (batch, K, L, 2N) tensor, as the model's projection makes them."""
    u, delta, a, b, c, d, bias = inputs
    u, delta = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (u, delta))
    bc = torch.cat([b, c], dim=2).transpose(-1, -2).contiguous().transpose(-1, -2)
    return u, delta, a, bc[:, :, :b.shape[2]], bc[:, :, b.shape[2]:], d, bias


def map_layout(shape, k, n, dtype, dev):
    """SS2D's inputs as the model passes them (``map_height``): one row-major token tensor for both orders,
    dt and [B, C] of every direction at row-major positions, as the projection GEMMs write them."""
    b, g, d, seq_len = shape
    gen = torch.Generator(device=dev).manual_seed(0)
    rand = lambda *s: torch.randn(*s, device=dev, generator=gen)  # noqa: E731
    x = rand(b, seq_len, d).to(dtype)
    dt = (0.5 * rand(b, seq_len, k, d) - 1).to(dtype).permute(0, 2, 3, 1)
    bc = rand(b, seq_len, k, 2 * n).to(dtype).permute(0, 2, 3, 1)
    return (x.transpose(1, 2)[:, None].expand(b, g, d, seq_len), dt, -torch.exp(rand(k * d, n).clamp(-2, 2)),
            bc[:, :, :n], bc[:, :, n:], rand(k * d), 0.5 * rand(k * d))


def steps_ready(inputs):
    """The same call with the step sizes computed beforehand, as ``ops.triton_delta`` hands them to the model's scans
    (softplus(delta + bias), stored like delta), and no bias left for the kernel."""
    u, delta, a, b, c, d, bias = inputs
    steps = torch.nn.functional.softplus(delta.float() + bias.view(1, delta.shape[1], -1, 1))
    return u, torch.empty_like(delta).copy_(steps), a, b, c, d, None


def load_module(path: str):
    """Load another version of ops/triton_scan.py; its custom op is renamed so it does not replace this one's."""
    source = open(path).read().replace('"sigma_ros::', '"sigma_ros_compared::')
    spec = importlib.util.spec_from_loader("compared_triton_scan", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path  # triton.jit reads the kernels' source through inspect
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def sweep_configs(shape, k, n):
    """(BLOCK_D, segments, warps, steps) to try: one channel a lane, 1, 2 or 4 steps a group, segments for 24 to 192
    programs a multiprocessor."""
    configs = []
    for steps in (1, 2, 4):
        for warps_per_sm in (24, 48, 96, 192):
            segments = triton_scan.pick_segments(shape[0] * k, shape[2], shape[3], 32, warps_per_sm)
            if (32, segments, 1, steps) not in configs:
                configs.append((32, segments, 1, steps))
    if n <= 4:  # small states leave registers for two channels a lane: twice the independent work per thread
        for steps in (1, 2):
            for warps_per_sm in (12, 24, 48):
                segments = triton_scan.pick_segments(shape[0] * k, shape[2], shape[3], 64, warps_per_sm)
                if (64, segments, 1, steps) not in configs:
                    configs.append((64, segments, 1, steps))
    return configs


def unfused(args, bidirectional, low_precision=True):
    with sigma_module.low_precision_scan_inputs(low_precision):
        return sigma_module.scan_directions(*args, bidirectional)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-budget-s", type=float, default=150.0, help="stop sweeping after this long")
    ap.add_argument("--sweep-d-state", type=int, default=0, help="sweep only the scans of this state size")
    ap.add_argument("--golden", help="sigma_golden_a.npz: check the fast fp32 path with fused scans against it")
    ap.add_argument("--compare-with", metavar="FILE", help="another triton_scan.py to time at its default config")
    ap.add_argument("--json")
    args = ap.parse_args()
    other = load_module(args.compare_with) if args.compare_with else None
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
    total_unfused = total_fused = total_best = total_other = total_model = total_softplus = 0.0
    print(f"\n{'u shape':22} {'K':>2} {'N':>2} {'calls':>5} {'unfused':>9} {'fused':>9} {'ch-last':>9} {'rel err':>8}  "
          + ("compared (model layout)  " if other else "") + "config (BLOCK_D, segments, warps, steps)")
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
            # as the model calls the kernel: SS2D reads both orders of one row-major tensor (map_height), the
            # other blocks channels-last tokens; the step sizes ready; also with the kernel's own softplus
            height = next((h // 2**s for s in range(2, 6) if (h // 2**s) * (w // 2**s) == shape[3]), None)
            if shape[1] == 2 and bidirectional and height:
                softplus_in = map_layout(shape, k, n, torch.bfloat16, dev)
            else:
                height = 0
                softplus_in = last
            model_in = steps_ready(softplus_in)
            model_ms = graph_ms(lambda: triton_scan.scan_directions(*model_in, bidirectional, channels_last=True,
                                                                    map_height=height))
            softplus_ms = graph_ms(lambda: triton_scan.scan_directions(*softplus_in, bidirectional,
                                                                       channels_last=True, map_height=height))
            if other is not None:
                other_out = other.scan_directions(*last, bidirectional, channels_last=True)
                other_err = ((other_out - reference.float()).norm() / reference.float().norm()).item()
                t_other = graph_ms(lambda: other.scan_directions(*softplus_in, bidirectional, channels_last=True,
                                                                 map_height=height))
        config = triton_scan.pick_config(shape[0] * k, shape[2], shape[3], n)
        row = {"u_shape": shape, "directions": k, "d_state": n, "bidirectional": bidirectional, "calls": count,
               "unfused_ms": t_unfused, "fused_ms": t_fused, "fused_channels_last_ms": t_fused_last,
               "fused_rel_err": err, "config": config, "model_layout_ms": model_ms,
               "model_layout_softplus_in_kernel_ms": softplus_ms, "map_height": height}
        if other is not None:
            row.update(compared_ms=t_other, compared_rel_err=other_err)
            total_other += count * t_other
        if args.sweep and time.perf_counter() < deadline and args.sweep_d_state in (0, n):
            best = (model_ms, config)
            with torch.inference_mode():
                model_ref = triton_scan.scan_directions(*model_in, bidirectional, channels_last=True, map_height=height)
            row["sweep"] = []
            for candidate in sweep_configs(shape, k, n):
                if time.perf_counter() > deadline:
                    break
                with torch.inference_mode():
                    run = lambda: triton_scan.scan_directions(  # noqa: E731
                        *model_in, bidirectional, channels_last=True, map_height=height, config=candidate)
                    candidate_err = ((run() - model_ref).norm() / model_ref.norm()).item()  # vs the default config
                    t = graph_ms(run, iters=20)
                row["sweep"].append((candidate, t, candidate_err))
                if candidate_err < 1e-5:
                    best = min(best, (t, candidate))
            row["best_ms"], row["best_config"] = best
            total_best += count * best[0]
        else:
            total_best += count * model_ms
        total_unfused += count * t_unfused
        total_fused += count * t_fused
        total_model += count * model_ms
        total_softplus += count * softplus_ms
        out["calls"].append(row)
        print(f"{str(shape):22} {k:2d} {n:2d} {count:5d} {t_unfused:7.3f}ms {t_fused:7.3f}ms {t_fused_last:7.3f}ms "
              f"{err:8.1e}  " + (f"{t_other:7.3f}ms {other_err:7.1e}  " if other else "") + f"{row['config']}"
              + f"  model layout {model_ms:.3f}ms (softplus in the kernel {softplus_ms:.3f}ms)"
              + (f"  best {row['best_config']} {row['best_ms']:.3f}ms" if "best_ms" in row else ""), flush=True)
    out.update(scan_ms_per_forward_unfused=total_unfused, scan_ms_per_forward_fused=total_fused,
               scan_ms_per_forward_model_layout=total_model,
               scan_ms_per_forward_model_layout_softplus_in_kernel=total_softplus)
    if other is not None:
        out["scan_ms_per_forward_compared"] = total_other
        print(f"per forward, the compared module ({args.compare_with}) at its defaults, on the model's layout: "
              f"{total_other:.2f} ms")
    print(f"per forward, as the model calls the kernel: {total_model:.2f} ms ({total_softplus:.2f} ms with the "
          "softplus in the kernel)")
    print(f"\nper Sigma-{args.variant} forward: unfused scans {total_unfused:.2f} ms, fused {total_fused:.2f} ms, "
          f"fused at the best layout/config measured {total_best:.2f} ms")
    out["scan_ms_per_forward_best"] = total_best
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
