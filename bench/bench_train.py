"""Training-step benchmark: images/s and peak memory of the trainer's step (``sigma_ros.training.step.train_step``:
AdamW, CE with ignore 255, the official recipe) for several precision settings, in one run.

    python bench/bench_train.py                                  # Sigma-T, 480x640, batch 8, fp32 vs fast
    python bench/bench_train.py --modes fp32,fast,fast_bf16scan --steps 200 --json bench/train.json
    torchrun --standalone --nproc_per_node 2 bench/bench_train.py --modes fast    # DDP: batch split over GPUs
    python bench/bench_train.py --cpu-smoke                       # micro model, 64x96, CPU: checks the script
    python bench/bench_train.py --modes fast_bf16scan --profile 3  # + where a step's GPU time goes, by kernel kind

Modes:
  fp32           fp32 everywhere, TF32 off (the official code's numerics; its reference: 784 ms/step = 10.2 img/s
                 and 59 GiB peak for Sigma-T batch 8 on an H200)
  fast           bf16 autocast + TF32; every mode uses the trainer's fused AdamW
  fast_bf16scan  as fast, and the selective scans get bf16 inputs (fp32 state; trainer option scan_bf16)
                 (the trainer's GPU default is fast_bf16scan_compile_tscan)
  <mode>_ckpt    any of the above with activation checkpointing of every block (trainer option
                 activation_checkpointing: all); <mode>_ckpthires of the first stage's blocks only (high-res)
  <mode>_compile any of the above with the model under torch.compile (trainer option compile); its
                 compilation happens in the first step, timed separately
  <mode>_tscan   any of the above with the fused Triton scan and its backward (trainer option triton_scans)
                 instead of mamba-ssm's kernels on flipped copies
  <mode>_cudagraphs  any compiled mode, its steps replayed as CUDA graphs (trainer option cuda_graphs; one process)
Peak memory is what the caching allocator handed out (allocated) and what it held from the driver (reserved);
with CUDA graphs the graphs' private pool is reserved for the whole run, so there reserved is the figure to read.
Batches are synthetic street scenes (sigma_ros.data.synthetic) augmented by the trainer's pipeline once and kept
on the device, so the loader is not timed here; the loader's own rate (one process) is printed separately.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

MODES = {
    "fp32": dict(amp=None, tf32=False, scan_bf16=False, ckpt=False, compile=False),
    "fast": dict(amp=torch.bfloat16, tf32=True, scan_bf16=False, ckpt=False, compile=False),
    "fast_bf16scan": dict(amp=torch.bfloat16, tf32=True, scan_bf16=True, ckpt=False, compile=False),
}
for _name in list(MODES):  # "<mode>_ckpt": the same with activation checkpointing (memory for compute)
    MODES[_name + "_ckpt"] = {**MODES[_name], "ckpt": "all"}
    MODES[_name + "_ckpthires"] = {**MODES[_name], "ckpt": "high-res"}
for _name in list(MODES):  # "<mode>_compile": under torch.compile (trainer option compile)
    MODES[_name + "_compile"] = {**MODES[_name], "compile": True}
for _name in list(MODES):  # "<mode>_tscan": the Triton scan and its backward (trainer option triton_scans)
    MODES[_name + "_tscan"] = {**MODES[_name], "triton": True}
for _name in [n for n, m in MODES.items() if m["compile"]]:  # "<mode>_cudagraphs" (trainer option cuda_graphs)
    MODES[_name + "_cudagraphs"] = {**MODES[_name], "cudagraphs": True}
for _mode in MODES.values():
    _mode.setdefault("triton", False)
    _mode.setdefault("cudagraphs", False)


def make_batches(n_batches: int, batch: int, h: int, w: int, num_classes: int, seed: int = 0):
    """Augmented (rgb, x, label) CPU batches from synthetic scenes, via the trainer's TrainSet; and its rate."""
    from sigma_ros.data.synthetic import make_scene
    from sigma_ros.training.augment import scale_choices
    from sigma_ros.training.data import TrainSet, collate_train

    scenes = [make_scene(seed * 1000 + i, h, w) for i in range(min(8, n_batches * batch))]
    items = [{"rgb": s["rgb"], "x": s["x"], "label": s["label"], "name": str(i)} for i, s in enumerate(scenes)]
    ds = TrainSet(items, crop=(h, w), scales=scale_choices(), seed=seed, num_classes=num_classes)
    ds[(1, 0)]  # warm-up (lazy imports)
    t0 = time.perf_counter()
    samples = [ds[(0, i % len(items))] for i in range(n_batches * batch)]
    rate = len(samples) / (time.perf_counter() - t0)
    return [collate_train(samples[b * batch:(b + 1) * batch]) for b in range(n_batches)], rate


def run_mode(name: str, args, dist_info, device, batches) -> dict:
    from sigma_ros.model import SigmaConfig, build_sigma
    from sigma_ros.training.optim import build_optimizer
    from sigma_ros.training.step import compile_for_training, enable_activation_checkpointing, train_step

    mode = MODES[name]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = mode["tf32"]
        torch.backends.cudnn.allow_tf32 = mode["tf32"]
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    cfg = SigmaConfig.from_variant(args.variant, num_classes=9)
    model = build_sigma(cfg).to(device).train()
    if mode["ckpt"]:
        enable_activation_checkpointing(model, mode["ckpt"])
    net = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
                  gradient_as_bucket_view=True)
    if mode["cudagraphs"] and (dist_info.enabled or device.type != "cuda"):
        raise SystemExit(f"{name}: CUDA graphs need one GPU process (as the trainer's cuda_graphs option)")
    if mode["compile"]:
        net = compile_for_training(net, device, cuda_graphs=mode["cudagraphs"])
    opt, info = build_optimizer(model, 6e-5, 0.01, official=args.official_param_groups)  # as the trainer
    gpu_batches = [tuple(t.to(device) for t in b) for b in batches]

    def stream():
        i = 0
        while True:
            yield gpu_batches[i % len(gpu_batches)]
            i += 1

    it = stream()

    def step():
        return train_step(net, opt, it, device, amp_dtype=mode["amp"], ddp=dist_info.enabled,
                          scan_bf16=mode["scan_bf16"], triton_scans=mode["triton"], cuda_graphs=mode["cudagraphs"])

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    step()  # the first step pays for lazy set-up and, with torch.compile, for the compilation
    sync()
    first_step_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        step()
    sync()
    if args.profile and dist_info.rank == 0:
        print_profile(name, step, args.profile, sync, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    per_rank = batches[0][0].shape[0]
    med = statistics.median(times)
    res = {
        "mode": name, "variant": args.variant, "size": f"{args.height}x{args.width}",
        "batch_global": per_rank * dist_info.world_size, "processes": dist_info.world_size,
        "step_ms_median": round(1000 * med, 2), "step_ms_mean": round(1000 * statistics.mean(times), 2),
        "images_per_s": round(per_rank * dist_info.world_size / med, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "peak_reserved_gib": (round(torch.cuda.max_memory_reserved(device) / 2**30, 2) if device.type == "cuda"
                              else None),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "first_step_s": round(first_step_s, 1),
        "optimised_params": info["optimised_params"], "official_param_groups": args.official_param_groups,
    }
    del net, model, opt, gpu_batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


# Kernel kinds of a training step, by the first pattern a CUDA kernel's name matches (names differ between torch
# builds, so these are substrings, not exact names).
KERNEL_KINDS = (
    ("selective scan backward", ("selective_scan_bwd", "_summaries_kernel", "_fold_kernel", "_gradients_kernel")),
    ("selective scan forward", ("selective_scan_fwd", "_scan_directions_kernel")),
    ("GEMM", ("gemm", "sm90_xmma", "cutlass", "cublas", "wgmma", "ampere_", "sm80_")),
    ("convolution", ("conv", "dgrad", "wgrad", "implicit")),
    ("LayerNorm", ("layer_norm", "LayerNorm")),
    ("optimizer", ("multi_tensor", "adam", "Adam")),
    ("copy / cat / flip / cast", ("copy", "cat", "flip", "Cat", "index", "gather", "scatter")),
    ("reduction", ("reduce", "Reduce")),
    ("element-wise", ("elementwise", "vectorized", "Elementwise", "unrolled")),
)


def kernel_kind(name: str) -> str:
    for kind, patterns in KERNEL_KINDS:
        if any(p in name for p in patterns):
            return kind
    return "other"


def gpu_idle_ms(prof) -> float:
    """Time in a profile's span of GPU kernels that no kernel runs (the CPU's launches lagging behind)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    idle, reach = 0.0, spans[0][0] if spans else 0.0
    for start, end in spans:
        idle += max(0.0, start - reach)
        reach = max(reach, end)
    return idle / 1000


def print_profile(mode: str, step, steps: int, sync, device: torch.device) -> None:
    """torch.profiler over ``steps`` training steps: GPU time per step by kernel kind, then the top kernels (on the
    CPU: operator self time, which only checks the script)."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if gpu else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        sync()

    def ms(e) -> float:
        return (e.self_device_time_total if gpu else e.self_cpu_time_total) / steps / 1000

    events = [e for e in prof.key_averages() if ms(e) > 0]
    total = sum(ms(e) for e in events)
    kinds: dict[str, list] = {}
    for e in events:
        entry = kinds.setdefault(kernel_kind(e.key), [0.0, 0])
        entry[0] += ms(e)
        entry[1] += e.count // steps
    print(f"{mode}: {total:.1f} ms of {'GPU' if gpu else 'CPU'} time per step, by kernel kind:")
    if gpu:
        print(f"  the GPU idles {gpu_idle_ms(prof) / steps:.1f} ms a step between kernels (waiting for launches)")
    for kind, (t, count) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        print(f"  {t:8.1f} ms {100 * t / total:5.1f} % {count:6d} kernels  {kind}")
    print("  top kernels:")
    for e in sorted(events, key=ms, reverse=True)[:25]:
        print(f"  {ms(e):8.2f} ms {e.count // steps:5d}x  {e.key[:100]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", default="480x640", help="HxW")
    ap.add_argument("--batch", type=int, default=8, help="global batch (split over DDP processes)")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--modes", default=None, help="comma-separated, from: " + ", ".join(MODES) + " [fp32,fast]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--official-param-groups", action="store_true")
    ap.add_argument("--json", help="append the results to this JSON file (a list)")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="profile this many extra steps per mode and print GPU time by kernel kind (CUDA)")
    ap.add_argument("--cpu-smoke", action="store_true", help="micro model, 64x96, batch 2, 2 steps on the CPU")
    args = ap.parse_args()
    if args.cpu_smoke:
        args.variant, args.size, args.batch, args.steps, args.warmup, args.device = "micro", "64x96", 2, 2, 1, "cpu"
        args.modes = args.modes or "fp32"
    args.modes = args.modes or "fp32,fast"
    args.height, args.width = (int(v) for v in args.size.lower().split("x"))

    from sigma_ros.ops.selective_scan import describe_backend
    from sigma_ros.training.distributed import init_distributed, shutdown
    from sigma_ros.training.trainer import resolve_device

    dist_info = init_distributed(args.device)
    device = resolve_device(args.device, dist_info)
    if args.batch % dist_info.world_size:
        print(f"--batch {args.batch} is not divisible by {dist_info.world_size} processes", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"unknown modes {unknown}; choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    per_rank = args.batch // dist_info.world_size
    batches, loader_rate = make_batches(4, per_rank, args.height, args.width, 9, seed=dist_info.rank)
    main_rank = dist_info.rank == 0
    if main_rank:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"device: {name} x{dist_info.world_size}, torch {torch.__version__}, scan: {describe_backend(device)}, "
              f"Sigma-{args.variant} {args.height}x{args.width}, global batch {args.batch}")
        print(f"loader (augmentation of one sample, one process): {loader_rate:.1f} samples/s")
    results = []
    for m in modes:
        r = run_mode(m, args, dist_info, device, batches)
        results.append(r)
        if main_rank:
            mem = (f", peak {r['peak_mem_gib']:.2f} GiB ({r['peak_reserved_gib']:.2f} reserved)"
                   if r["peak_mem_gib"] is not None else "")
            print(f"{m:>14}: {r['step_ms_median']:8.1f} ms/step  {r['images_per_s']:7.2f} img/s{mem}  "
                  f"(loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}; first step {r['first_step_s']:.1f} s)")
    if main_rank and len(results) > 1:
        base = results[0]["images_per_s"]
        print("speed-up vs " + results[0]["mode"] + ": " +
              ", ".join(f"{r['mode']} {r['images_per_s'] / base:.2f}x" for r in results[1:]))
    if main_rank and args.json:
        old = json.load(open(args.json)) if os.path.exists(args.json) else []
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        for r in results:
            r["device"] = device_name
        json.dump(old + results, open(args.json, "w"), indent=2)
    shutdown(dist_info)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
