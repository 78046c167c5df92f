"""The GPU fast path of this checkout against another commit's, timed on one machine in one run.

    python bench/bench_ab.py --baseline REV [--baseline REV2 ...] [--variant tiny] [--size 640x480] [--rounds 2]
                             [--json OUT.json]

REV is any git revision of this repository (its ``sigma_ros`` is extracted with ``git archive``; no git on the machine:
``--baseline-dir DIR`` names a folder that holds another ``sigma_ros`` instead). Both options repeat, so one run can
time several candidates against this checkout (device time is scarce). Each package runs in its own process, all of
them alternating ``--rounds`` times, so drift of the machine falls on each. A process builds the model
from one seed, warms the fast bf16 forward up (Triton compiles its kernels on a machine's first run: minutes on a
fresh one, so the first round also serves as the warm-up), then reports the median of 90 CUDA-graph replays, the
GPU kernel time and count from torch.profiler over 10 replays, the heaviest kernels, and the argmax agreement with
the eager fp32 forward. The two packages' logits are compared too.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(variant: str, size: str, out: str) -> None:
    """One package's measurement (run with PYTHONPATH set to that package's root)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import sigma_ros
    from sigma_ros.model import SigmaConfig, build_sigma
    from sigma_ros.model.fast import build_fast_forward

    w, h = (int(v) for v in size.split("x"))
    torch.manual_seed(0)
    model = build_sigma(SigmaConfig.from_variant(variant)).cuda().eval()
    gen = torch.Generator(device="cuda").manual_seed(1)
    rgb = torch.randn(1, 3, h, w, device="cuda", generator=gen)
    x = torch.randn(1, 3, h, w, device="cuda", generator=gen)
    with torch.inference_mode():
        fast = build_fast_forward(model, torch.bfloat16)
        for _ in range(5):
            logits = fast(rgb, x)
        torch.cuda.synchronize()
        times = []
        for _ in range(90):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fast(rgb, x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fast(rgb, x)
            torch.cuda.synchronize()
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
            reference = model(rgb, x)
    kernels = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)
    torch.save(logits.cpu(), out + ".pt")
    result = {
        "package": str(Path(sigma_ros.__file__).parent), "device": torch.cuda.get_device_name(),
        "forward_ms": statistics.median(times), "kernel_ms": sum(e.self_device_time_total for e in kernels) / 1e4,
        "kernels": sum(e.count for e in kernels) // 10,
        "argmax_vs_eager_fp32_pct": (reference.argmax(1) == logits.argmax(1)).float().mean().item() * 100,
        "top": [(e.key[:80], e.self_device_time_total / 1e4, e.count // 10) for e in kernels[:10]],
        "all_kernels": [(e.key[:160], e.self_device_time_total / 1e4, e.count // 10) for e in kernels],
    }
    Path(out).write_text(json.dumps(result))


def baseline_package(rev: str, into: str) -> str:
    """The ``sigma_ros`` of git revision ``rev`` extracted under ``into``; returns its root."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "sigma_ros"], check=True, capture_output=True)
    os.makedirs(into, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return into


def packages(revs: list[str], dirs: list[str], tmp: str) -> dict[str, str]:
    """{name: root} of the packages to time: the baseline folders (named by their folder, or by the whole path where
    two share a name), the revisions extracted under ``tmp`` (HEAD if nothing is given), then this checkout."""
    roots = {}
    for d in dirs:
        name = os.path.basename(os.path.normpath(d))
        roots[d if name in roots else name] = d
    for rev in revs or ([] if roots else ["HEAD"]):
        roots[rev] = baseline_package(rev, os.path.join(tmp, f"rev{len(roots)}"))
    roots["this"] = str(ROOT)
    return roots


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", action="append", default=[],
                    help="git revision to compare against (repeatable; default: HEAD)")
    ap.add_argument("--baseline-dir", action="append", default=[],
                    help="a folder holding a baseline's sigma_ros package (repeatable)")
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a measurement may take (compiles included)")
    ap.add_argument("--json")
    ap.add_argument("--worker", nargs=3, metavar=("VARIANT", "SIZE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 1
    if args.worker:
        worker(*args.worker)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        roots = packages(args.baseline, args.baseline_dir, tmp)
        runs = {name: [] for name in roots}
        for round_ in range(args.rounds):
            for name, root in roots.items():
                out = os.path.join(tmp, f"{name}{round_}.json")
                env = dict(os.environ, PYTHONPATH=root)
                subprocess.run([sys.executable, __file__, "--worker", args.variant, args.size, out], env=env,
                               check=True, timeout=args.timeout)
                runs[name].append(json.loads(Path(out).read_text()))
                r = runs[name][-1]
                print(f"round {round_ + 1} {name:12} forward {r['forward_ms']:.3f} ms, kernels {r['kernel_ms']:.3f} ms "
                      f"in {r['kernels']}, argmax = eager fp32 {r['argmax_vs_eager_fp32_pct']:.2f} %", flush=True)
        last = {name: torch.load(os.path.join(tmp, f"{name}{args.rounds - 1}.json.pt")) for name in roots}
    summary = {name: min(r["forward_ms"] for r in rs) for name, rs in runs.items()}
    agree = {name: (last[name].argmax(1) == last["this"].argmax(1)).float().mean().item() * 100
             for name in roots if name != "this"}
    print(f"\n{runs['this'][0]['device']}, Sigma-{args.variant} fast bf16, batch 1, {args.size} (best median of "
          f"{args.rounds} rounds): this checkout {summary['this']:.3f} ms")
    for name, pct in agree.items():
        print(f"  against {name}: {summary[name]:.3f} ms ({summary[name] - summary['this']:+.3f} ms); labels agree "
              f"on {pct:.2f} % of pixels")
    for name in roots:
        print(f"\nheaviest kernels, {name}:")
        for key, ms, count in runs[name][-1]["top"]:
            print(f"  {ms:7.3f} ms {count:5d}x  {key}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "labels_agree_pct": agree}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
