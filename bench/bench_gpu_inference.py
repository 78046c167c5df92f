"""GPU inference: the plain fp32 eager path (the official code's math and op sequence) against the fast path,
in one run.

    python bench/bench_gpu_inference.py [--variants tiny,small,base] [--json OUT.json]

For each variant, batch 1 at 480x640 (RGB + thermal): median latency (CUDA events, after warm-up), peak GPU memory,
and the fast path's agreement with fp32 (max |logit diff|, per-pixel argmax agreement). Batch 8 throughput for
Sigma-T. Needs mamba-ssm's CUDA kernel (see README). Random weights and inputs, unless --checkpoint is given: then
that model runs on a synthetic street scene (what the bundled demo model was trained on).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from sigma_ros.data.synthetic import make_scene
from sigma_ros.model import SigmaConfig, build_sigma, load_checkpoint
from sigma_ros.model.fast import build_fast_forward
from sigma_ros.ops.selective_scan import describe_backend
from sigma_ros.preprocess import preprocess_pair


def timed(fn, *args, warmup=10, iters=50) -> float:
    """Median milliseconds of fn(*args) on the GPU."""
    for _ in range(warmup):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_mib(fn, *args) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(*args)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def agreement(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    return (ref - out).abs().max().item(), (ref.argmax(1) == out.argmax(1)).float().mean().item() * 100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="tiny,small,base")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--checkpoint", help="time and compare on these weights (e.g. a trained model)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--fast-variants", default="bf16,fp16,fp32,bf16_mamba_scans",
                    help="which fast paths to time next to eager fp32 (each compiles its own kernels on a first run)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the compiled fast path (torch.compile, scan as a custom op; minutes to compile)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 1
    w, h = (int(v) for v in args.size.split("x"))
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, scan: {describe_backend(dev)}")
    results = []
    variants = ["checkpoint"] if args.checkpoint else args.variants.split(",")
    for variant in variants:
        torch.manual_seed(0)
        if args.checkpoint:
            ck = load_checkpoint(args.checkpoint)
            model, cfg = ck.model.to(dev), ck.config
        else:
            cfg = SigmaConfig.from_variant(variant, num_classes=9)
            model = build_sigma(cfg).to(dev).eval()
        if args.checkpoint:  # a trained model: judge agreement on the kind of scene it was trained on
            scene = make_scene(1, h, w)
            rgb, x = (t[None].to(dev) for t in preprocess_pair(scene["rgb"], scene["x"], ck.preprocessing or "rgb"))
        else:
            gen = torch.Generator(device=dev).manual_seed(1)
            rgb = torch.randn(1, 3, h, w, device=dev, generator=gen)
            x = torch.randn(1, 3, h, w, device=dev, generator=gen)

        @torch.inference_mode()
        def eager_fp32(r, t):
            with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
                return model(r, t)

        # Peak memory of the fast path counts its CUDA-graph pool: measure from before the capture.
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fast = {"bf16": build_fast_forward(model, torch.bfloat16)}
        with torch.inference_mode():
            fast["bf16"](rgb, x)
        torch.cuda.synchronize()
        fast_peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        wanted = args.fast_variants.split(",")
        fast.update({p: build_fast_forward(model, d) for p, d in (("fp16", torch.float16), ("fp32", torch.float32))
                     if p in wanted})
        if "bf16_mamba_scans" in wanted:  # the path before the fused kernels
            fast["bf16_mamba_scans"] = build_fast_forward(model, torch.bfloat16, fused_scan=False)
        row = {"variant": cfg.variant, "size": f"{w}x{h}"}
        with torch.inference_mode():
            t0 = time.perf_counter()
            ref = eager_fp32(rgb, x)
            row["eager_fp32_ms"] = timed(eager_fp32, rgb, x, iters=args.iters)
            row["eager_fp32_peak_mib"] = peak_mib(eager_fp32, rgb, x)
            for p, fn in fast.items():
                out = fn(rgb, x)  # captures the graph
                row[f"fast_{p}_ms"] = timed(fn, rgb, x, iters=args.iters)
                row[f"fast_{p}_max_abs_diff"], row[f"fast_{p}_argmax_agree_pct"] = agreement(ref, out)
            row["fast_bf16_peak_mib"] = fast_peak
            if args.compile:
                t_compile = time.perf_counter()
                compiled = build_fast_forward(model, torch.bfloat16, compile=True)
                out = compiled(rgb, x)
                row["compile_s"] = time.perf_counter() - t_compile
                row["fast_compiled_bf16_ms"] = timed(compiled, rgb, x, iters=args.iters)
                row["fast_compiled_bf16_max_abs_diff"], row["fast_compiled_bf16_argmax_agree_pct"] = \
                    agreement(ref, out)
            if variant in ("tiny", "checkpoint"):
                rgb8, x8 = rgb.expand(8, -1, -1, -1).contiguous(), x.expand(8, -1, -1, -1).contiguous()
                row["batch8_eager_fp32_img_s"] = 8000 / timed(eager_fp32, rgb8, x8, warmup=3, iters=10)
                row["batch8_fast_bf16_img_s"] = 8000 / timed(fast["bf16"], rgb8, x8, warmup=3, iters=10)
            row["wall_s"] = time.perf_counter() - t0
        row["speedup_bf16"] = row["eager_fp32_ms"] / row["fast_bf16_ms"]
        results.append(row)
        print(json.dumps(row), flush=True)
        del model, fast
        torch.cuda.empty_cache()

    def ms(r, key):  # a column whose fast path was not asked for prints a dash
        return f"{r[key]:8.2f}ms" if key in r else f"{'-':>10}"

    print(f"\n{'variant':8} {'eager fp32':>11} {'fast fp32':>10} {'bf16 mamba':>10} {'fast bf16':>10} "
          f"{'fast fp16':>10} {'speedup':>8} {'peak eager':>11} {'peak fast':>10} {'argmax bf16':>12}")
    for r in results:
        print(f"{r['variant']:8} {r['eager_fp32_ms']:9.2f}ms {ms(r, 'fast_fp32_ms')} "
              f"{ms(r, 'fast_bf16_mamba_scans_ms')} {r['fast_bf16_ms']:8.2f}ms {ms(r, 'fast_fp16_ms')} "
              f"{r['speedup_bf16']:7.1f}x {r['eager_fp32_peak_mib']:8.0f}MiB {r['fast_bf16_peak_mib']:7.0f}MiB "
              f"{r['fast_bf16_argmax_agree_pct']:10.2f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "results": results},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
