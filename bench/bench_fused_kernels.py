"""What each fused kernel buys, model level: the fast bf16 forward with and without the fused LayerNorm, and
optionally with another version of the scan kernel, timed in one process (A, B, A again).

    python bench/bench_fused_kernels.py [--variants tiny,small,base] [--compare-scan OLD_triton_scan.py]

``--compare-scan`` routes the model's scans through another ``ops/triton_scan.py`` (say the previous commit's:
``git show HEAD~1:sigma_ros/ops/triton_scan.py > /tmp/old_scan.py``). Each row prints the median latency and the
argmax agreement with the fast fp32 path with mamba-ssm's scans. Needs a CUDA device (and mamba-ssm for the fp32
reference).
"""
from __future__ import annotations

import argparse
import contextlib
import sys

import torch

import sigma_ros.model.fast as fast
import sigma_ros.model.sigma as sigma_module
from sigma_ros.model import SigmaConfig, build_sigma
from sigma_ros.ops import triton_scan

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_gpu_inference import timed  # noqa: E402
from bench_gpu_scan import load_module  # noqa: E402


@contextlib.contextmanager
def variant_of_fast_path(norms: bool, scan_op=None):
    """The fast path with the fused LayerNorm on or off, and the scans through ``scan_op`` if given."""
    real_norms, real_scan = fast.fused_norms, triton_scan.scan_directions_op
    if not norms:
        fast.fused_norms = lambda enabled=True: sigma_module.fused_norms(False)
    if scan_op is not None:
        triton_scan.scan_directions_op = scan_op
    try:
        yield
    finally:
        fast.fused_norms, triton_scan.scan_directions_op = real_norms, real_scan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="tiny,small,base")
    ap.add_argument("--compare-scan", metavar="FILE")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 1
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    steps = [("fused norms", dict(norms=True)), ("torch norms", dict(norms=False))]
    if args.compare_scan:
        steps.append(("compared scan, fused norms", dict(norms=True, scan_op=load_module(args.compare_scan).scan_directions_op)))
    steps.append(("fused norms again", dict(norms=True)))
    for variant in args.variants.split(","):
        model = build_sigma(SigmaConfig.from_variant(variant, num_classes=9)).cuda().eval()
        rgb = torch.randn(1, 3, 480, 640, device="cuda")
        x = torch.randn_like(rgb)
        with torch.inference_mode():
            reference = fast.build_fast_forward(model, torch.float32, fused_scan=False)(rgb, x).argmax(1)
            for name, kwargs in steps:
                with variant_of_fast_path(**kwargs):
                    forward = fast.build_fast_forward(model, torch.bfloat16)
                    agree = (forward(rgb, x).argmax(1) == reference).float().mean().item() * 100
                    print(f"Sigma-{variant:5} {name:28} {timed(forward, rgb, x, iters=30):6.2f} ms  argmax = fp32 on "
                          f"{agree:.2f} %", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
