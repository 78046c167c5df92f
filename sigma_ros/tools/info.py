"""``sigma-ros info``: parameter count, FLOPs (the authors' count and with the scans), scan backend, device."""
from __future__ import annotations

import argparse
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..model import SigmaConfig, build_sigma, load_checkpoint
from ..model import sigma as sigma_module
from ..ops.selective_scan import available_backends, describe_backend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", default="tiny", help="tiny | small | base | micro (default: tiny)")
    parser.add_argument("--checkpoint", help="describe this checkpoint's model instead of a variant")
    parser.add_argument("--num-classes", type=int, default=9)
    parser.add_argument("--size", default="640x480", help="input WxH for the FLOP count (default 640x480)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def _elementwise(per_element: int, use_output: bool):
    """fvcore's elementwise handles, in FlopCounterMode's units (2 per multiply-add)."""

    def count(*args, out_shape=None, **kwargs) -> int:
        shape = out_shape if use_output else args[0]
        return 2 * per_element * math.prod(shape)

    return count


aten = torch.ops.aten
# fvcore counts bilinear up-sampling at 4 per output element and average pooling at 1 per input element.
_FVCORE_EXTRAS = {
    aten.upsample_bilinear2d: _elementwise(4, True),
    aten.upsample_bilinear2d.vec: _elementwise(4, True),
    aten.mean.dim: _elementwise(1, False),
}


def count_flops(cfg: SigmaConfig, height: int, width: int) -> dict[str, float]:
    """GMACs of one forward at batch 1, counted on the meta device (instant, no memory).

    ``authors`` follows the paper's fvcore count: multiply-adds of linear, conv and einsum plus LayerNorm (5 per
    element), scans excluded (their fvcore handles never matched the op names). ``with_scans`` adds the selective
    scans as 9*B*L*D*N + B*D*L, the count the authors' handler would have used.
    """
    scan_gmacs = 0.0
    ln_elems = 0

    def counting_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, **_):
        nonlocal scan_gmacs
        b, d, seq = u.shape
        scan_gmacs += (9 * b * seq * d * A.shape[1] + b * d * seq) / 1e9
        return torch.zeros_like(u)

    def ln_hook(module, inputs, output):
        nonlocal ln_elems
        ln_elems += inputs[0].numel()

    with torch.device("meta"):
        model = build_sigma(cfg).eval()
        rgb = torch.zeros(1, 3, height, width)
    hooks = [m.register_forward_hook(ln_hook) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_FVCORE_EXTRAS)
        with sigma_module.scan_implementation(counting_scan), counter, torch.no_grad():
            model(rgb, rgb)
    finally:
        for h in hooks:
            h.remove()
    macs = counter.get_total_flops() / 2 / 1e9
    authors = macs + 5 * ln_elems / 1e9
    return {"counted_gmacs": macs, "authors_gflops": authors, "scan_gflops": scan_gmacs,
            "with_scans_gflops": authors + scan_gmacs}


def run(args) -> int:
    from ..segmenter import resolve_device

    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        cfg, model, source = ck.config, ck.model, args.checkpoint
    else:
        cfg = SigmaConfig.from_variant(args.variant, num_classes=args.num_classes)
        with torch.device("meta"):
            model = build_sigma(cfg)
        source = f"random init ({args.variant})"
    width, height = (int(v) for v in args.size.lower().split("x"))
    device = resolve_device(args.device)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(cfg, height, width)
    rows = [
        ("model", f"Sigma-{cfg.variant}: embed_dim {cfg.embed_dim}, depths {list(cfg.depths)}, "
                  f"decoder {list(cfg.decoder_depths)}, {cfg.num_classes} classes"),
        ("source", source),
        ("parameters", f"{params:,}"),
        (f"GFLOPs @{width}x{height}", f"{flops['authors_gflops']:.2f} (authors' count, scans excluded)"),
        ("GFLOPs with scans", f"{flops['with_scans_gflops']:.2f} (scans {flops['scan_gflops']:.2f})"),
        ("scan backend", describe_backend(device)),
        ("scan backends available", ", ".join(available_backends())),
        ("device", str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")),
        ("torch", torch.__version__),
    ]
    width_col = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width_col}}  {value}")
    return 0
