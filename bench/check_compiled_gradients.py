"""Does a torch.compile backend give the training step's gradients? One step of the trainer's model, loss and
autocast per backend, every parameter's gradient against eager without checkpointing (the reference), so graph
capture (``aot_eager``), decomposition and partitioning (``aot_eager_decomp_partition``) and code generation
(``inductor``) can be told apart when compiled training goes wrong.

    python bench/check_compiled_gradients.py                      # Sigma-T, 480x640, batch 4, high-res ckpt, GPU
    python bench/check_compiled_gradients.py --backends inductor,inductor_nockpt --checkpoint all
    python bench/check_compiled_gradients.py --backends inductor --drop-path --train-steps 5   # as the trainer
    python bench/check_compiled_gradients.py --cpu-smoke          # micro model, 32x48, CPU: checks the script

Backends: any torch.compile backend, and ``inductor_nopad`` (Inductor without its CUDA stride padding),
``inductor_nan_asserts`` (Inductor asserting every kernel's output is finite), ``<backend>_nockpt`` (compiled
without checkpointing: how far compilation alone moves the gradients). Stochastic depth is off so the gradients
compare (``--drop-path`` keeps it, and then only finiteness means anything). ``--train-steps N`` goes on with N
AdamW steps (the trainer's optimizer) on the training benchmark's augmented scenes with each compiled model, loss
and finiteness after each: for a NaN that needs several updates.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from sigma_ros.model import SigmaConfig, build_sigma  # noqa: E402
from sigma_ros.training.optim import build_optimizer  # noqa: E402
from sigma_ros.training.step import _scan_switches, enable_activation_checkpointing, segmentation_loss  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="aot_eager,aot_eager_decomp_partition,inductor")
    ap.add_argument("--checkpoint", default="high-res", choices=("none", "high-res", "all"))
    ap.add_argument("--variant", default="tiny")
    ap.add_argument("--size", default="480x640")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--drop-path", action="store_true", help="keep stochastic depth (gradients then differ)")
    ap.add_argument("--train-steps", type=int, default=0, help="then N optimizer steps per backend (see above)")
    ap.add_argument("--cpu-smoke", action="store_true", help="micro model, 32x48, batch 1, aot_eager, CPU")
    args = ap.parse_args()
    if args.cpu_smoke:
        args.variant, args.size, args.batch, args.backends = "micro", "32x48", 1, "aot_eager,aot_eager_nockpt"
    elif not torch.cuda.is_available():
        print("check_compiled_gradients: needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if args.cpu_smoke else "cuda")
    gpu = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    h, w = (int(v) for v in args.size.split("x"))
    g = torch.Generator().manual_seed(1)
    rgb, x = (torch.randn(args.batch, 3, h, w, generator=g).to(dev) for _ in range(2))
    label = torch.randint(0, 9, (args.batch, h, w), generator=g).to(dev)
    print(f"device: {torch.cuda.get_device_name(0) if gpu else 'CPU'}, torch {torch.__version__}, "
          f"Sigma-{args.variant} {h}x{w}, batch {args.batch}, checkpointing {args.checkpoint}, "
          f"Triton scans {gpu}", flush=True)

    def model(checkpoint: str):
        torch.manual_seed(0)
        m = build_sigma(SigmaConfig.from_variant(args.variant, num_classes=9)).to(dev).train()
        if not args.drop_path:
            for mod in m.modules():
                if hasattr(mod, "drop_path") and hasattr(mod.drop_path, "p"):
                    mod.drop_path.p = 0.0
        if checkpoint != "none":
            enable_activation_checkpointing(m, checkpoint)
        return m

    def step(m, net, tag):
        start = time.time()
        with torch.autocast(dev.type, dtype=torch.bfloat16), _scan_switches(gpu, gpu):
            logits = net(rgb, x)
        loss = segmentation_loss(logits, label)
        loss.backward()
        if gpu:
            torch.cuda.synchronize()
        grads = {n: p.grad.float() for n, p in m.named_parameters() if p.grad is not None}
        bad = [n for n, v in grads.items() if not torch.isfinite(v).all()]
        print(f"{tag}: loss {loss.item():.5f}, {time.time() - start:.0f} s, {len(grads)} gradients, "
              f"{len(bad)} non-finite {bad[:8]}", flush=True)
        return grads

    def train(m, net, tag):
        """``args.train_steps`` AdamW steps of the compiled ``net`` (parameters of ``m``) on augmented scenes."""
        from bench_train import make_batches  # the training benchmark's scenes, through the trainer's augmentation

        opt, _ = build_optimizer(m, 6e-5, 0.01)
        batches, _ = make_batches(min(4, args.train_steps), args.batch, h, w, 9)
        for i in range(args.train_steps):
            rgb_i, x_i, label_i = (t.to(dev) for t in batches[i % len(batches)])
            with torch.autocast(dev.type, dtype=torch.bfloat16), _scan_switches(gpu, gpu):
                logits = net(rgb_i, x_i)
            loss = segmentation_loss(logits, label_i)
            loss.backward()
            bad_grads = sum(not torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
            opt.step()
            opt.zero_grad(set_to_none=True)
            bad_params = sum(not torch.isfinite(p).all() for p in m.parameters())
            print(f"{tag} step {i + 1}: loss {loss.item():.5f}, non-finite gradients {bad_grads}, "
                  f"parameters {bad_params}", flush=True)
            if bad_params:
                break

    reference = model("none")
    want = step(reference, reference, "eager")
    del reference
    if args.checkpoint != "none":
        m = model(args.checkpoint)
        step(m, m, f"eager, checkpointed ({args.checkpoint})")
        del m
    import torch._inductor.config as inductor_config

    for name in args.backends.split(","):
        torch._dynamo.reset()
        backend, checkpoint = name.removesuffix("_nockpt"), "none" if name.endswith("_nockpt") else args.checkpoint
        with inductor_config.patch(nan_asserts=backend == "inductor_nan_asserts",
                                   comprehensive_padding=backend != "inductor_nopad"):
            m = model(checkpoint)
            net = torch.compile(m, backend="inductor" if backend.startswith("inductor") else backend)
            step(m, net, f"{name} (compiling)")
            m.zero_grad(set_to_none=True)
            got = step(m, net, name)
        errors = sorted((((got[n] - v).norm() / (v.norm() + 1e-12)).item(), n) for n, v in want.items() if n in got)
        print(f"  against eager: median relative difference {statistics.median(e for e, _ in errors):.2e}; "
              f"largest {[(round(e, 4), n) for e, n in errors[-3:]]}", flush=True)
        if args.train_steps:
            m.zero_grad(set_to_none=True)
            train(m, net, name)
        del m, net
    return 0


if __name__ == "__main__":
    sys.exit(main())
