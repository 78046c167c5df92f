"""What the compiled training step keeps from its forward for its backward, at full size, on the CPU and without
running it: the model is traced under torch.compile with AOTAutograd's min-cut partitioner (the one Inductor uses),
and the partitioned forward graph's outputs, one per storage, are the activations the backward receives. Compare
two versions of the code at the same settings to see what a change saves before a GPU measures the peak.

    TRITON_INTERPRET=1 python bench/compiled_activation_memory.py            # Sigma-T, batch 8, 480x640, bf16
    TRITON_INTERPRET=1 python bench/compiled_activation_memory.py --variant micro --size 32x48 --batch 1

``TRITON_INTERPRET=1`` is needed: through Triton's interpreter the CPU tensors take the Triton training scans, as
the trainer does on a GPU, and the model traces as one graph. The CPU's autocast rules and decompositions are close to, not the same as,
CUDA's, and the peak also holds weights, gradients, optimizer state and transient buffers: this is a proxy.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from torch._dynamo.backends.common import aot_autograd  # noqa: E402
from torch._functorch.partitioners import min_cut_rematerialization_partition  # noqa: E402

from sigma_ros.model import SigmaConfig, build_sigma  # noqa: E402
from sigma_ros.training.step import _scan_switches  # noqa: E402


class _Traced(Exception):
    """Raised by the forward compiler once it has read the graph: nothing is executed."""


def kept_activations(variant: str, batch: int, height: int, width: int) -> list[tuple[int, tuple, str, str]]:
    """(bytes, shape, dtype, producing op) of every storage the partitioned forward hands to the backward."""
    kept, storages = [], set()

    def read_forward(gm, _example_inputs):
        for node in next(n for n in gm.graph.nodes if n.op == "output").args[0]:
            value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
            if isinstance(value, torch.Tensor) and value.untyped_storage()._cdata not in storages:
                storages.add(value.untyped_storage()._cdata)
                kept.append((value.untyped_storage().nbytes(), tuple(value.shape),
                             str(value.dtype).removeprefix("torch."), str(node.target)))
        raise _Traced

    model = build_sigma(SigmaConfig.from_variant(variant, num_classes=9)).train()
    rgb, x = torch.randn(batch, 3, height, width), torch.randn(batch, 3, height, width)
    net = torch.compile(model, fullgraph=True, backend=aot_autograd(
        fw_compiler=read_forward, partition_fn=min_cut_rematerialization_partition))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), _scan_switches(True, True):
            net(rgb, x)
    except Exception as e:  # dynamo wraps what the backend raises
        if "_Traced" not in repr(e) and not isinstance(e, _Traced):
            raise
    return kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", default="480x640")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--top", type=int, default=15, help="how many op kinds and single tensors to list")
    ap.add_argument("--memory-budget", type=float, default=1.0,
                    help="AOTAutograd's activation_memory_budget (below 1: recompute more to keep less) [1.0]")
    args = ap.parse_args()
    import torch._functorch.config as functorch_config

    functorch_config.activation_memory_budget = args.memory_budget
    if os.environ.get("TRITON_INTERPRET") != "1":  # the CPU tensors take the Triton scans only through it
        print("compiled_activation_memory: run with TRITON_INTERPRET=1 (the trainer's GPU path, the Triton scans, "
              "traces as one graph on the CPU only through Triton's interpreter)", file=sys.stderr)
        return 2
    h, w = (int(v) for v in args.size.split("x"))
    kept = kept_activations(args.variant, args.batch, h, w)
    gib = 2**30
    print(f"Sigma-{args.variant}, batch {args.batch}, {h}x{w}, bf16 autocast, traced on the CPU: the compiled forward "
          f"keeps {len(kept)} storages, {sum(k[0] for k in kept) / gib:.2f} GiB, for the backward")
    by_op, count = collections.Counter(), collections.Counter()
    for size, _shape, dtype, op in kept:
        by_op[op, dtype] += size
        count[op, dtype] += 1
    for (op, dtype), size in by_op.most_common(args.top):
        print(f"  {size / gib:7.3f} GiB  {count[op, dtype]:4d} x  {op} ({dtype})")
    print("largest:")
    for size, shape, dtype, op in sorted(kept, reverse=True)[:args.top]:
        print(f"  {size / 2**20:8.1f} MiB  {shape} {dtype}  {op}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
