"""``sigma-ros train``: train or fine-tune Sigma on an RGB-X dataset folder (multi-GPU: run it under torchrun)."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Every option can also be set in --config FILE (YAML, same names with underscores); flags given on "
                "the command line win. Multi-GPU: torchrun --nproc_per_node N $(which sigma-ros) train ...")
    p.add_argument("--data", help="dataset folder (RGB/, Modal/, Label/, train.txt, test.txt; or MFNet/PST900/NYU)")
    p.add_argument("--out", help="run folder: checkpoints last.pt/best.pt, metrics.csv, curves.png, tb/")
    p.add_argument("--config", help="YAML file with training options (and classes)")
    p.add_argument("--variant", choices=["micro", "tiny", "small", "base"], default=None, help="model size [tiny]")
    p.add_argument("--classes", default=None,
                   help="class config: mfnet|pst900|nyu|sunrgbd or a YAML file [DATA/classes.yaml, else "
                        "class_0.. up to the largest label value]")
    p.add_argument("--num-classes", type=int, default=None, help="check (or, without names, set) the class count")
    p.add_argument("--max-steps", type=int, default=None, help="optimiser steps [500 epochs]")
    p.add_argument("--epochs", type=float, default=None, help="run length in epochs when --max-steps is not given")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (split across DDP processes) [8]")
    p.add_argument("--accum-steps", type=int, default=None, help="micro-batches per optimiser step [1]")
    p.add_argument("--crop", default=None, help="training crop HxW [480x640]")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate [6e-5]")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay [0.01]")
    p.add_argument("--warmup-steps", type=int, default=None, help="[2%% of the steps]")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N [auto]")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast [on for CUDA, off on CPU]")
    p.add_argument("--seed", type=int, default=None, help="seed of init, data order, augmentation [3407]")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its state.pt")
    p.add_argument("--pretrained", default=None, help="VMamba ImageNet checkpoint (.pth) for the encoder")
    p.add_argument("--init-checkpoint", default=None,
                   help="fine-tune from a Sigma checkpoint (ours or the authors'); the head is re-initialised "
                        "if the class count differs")
    p.add_argument("--official-param-groups", action="store_true", default=None,
                   help="optimise only Linear/Conv/Norm weights and biases, as the official train.py "
                        "(leaves ~6.4M SSM and scale parameters of Sigma-T untrained)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations [steps/10]")
    p.add_argument("--eval-split", default=None, help="split evaluated during training ('' = none) [test]")
    p.add_argument("--eval-max-images", type=int, default=None, help="evaluate on the first N images only")
    p.add_argument("--save-every", type=int, default=None,
                   help="steps between resume-state saves (state.pt, last.pt) [min(eval-every, 500)]")
    p.add_argument("--scan-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="under bf16 autocast, feed the selective scans bf16 inputs (fp32 state; faster, less "
                        "memory) [on for CUDA]")
    p.add_argument("--triton-scans", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU: the fused Triton scan and its backward instead of mamba-ssm's kernels, and the "
                        "decoder's last norm and classifier as one Triton op [on for CUDA]")
    p.add_argument("--activation-checkpointing", nargs="?", const="all", choices=["all", "high-res", "none"],
                   default=None,
                   help="recompute block activations in backward: 'all' blocks (the default when given without a "
                        "value; much less GPU memory, about one extra forward) or the 'high-res' ones (the first "
                        "stage's resolution: most of the memory for less recomputation)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model for training; the first step compiles, minutes on a first run "
                        "[on for CUDA]")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="with --compile: replay each step as CUDA graphs (less launch overhead; one GPU process, "
                        "no gradient accumulation) [off]")
    p.add_argument("--preprocessing", choices=["rgb", "official"], default=None,
                   help="input normalisation profile [init checkpoint's, else rgb]")
    p.add_argument("--modality", choices=["thermal", "depth"], default=None, help="[thermal]")
    blank = p.add_mutually_exclusive_group()
    blank.add_argument("--blank-x", dest="blank", action="store_const", const="x", default=None,
                       help="zero the X modality (modality ablation: RGB only)")
    blank.add_argument("--blank-rgb", dest="blank", action="store_const", const="rgb",
                       help="zero the RGB modality (modality ablation: X only)")
    p.add_argument("--workers", type=int, default=None, help="data loader workers per process [0 CPU, 8 GPU]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--scan-backend", default=None, help="selective-scan backend: cuda | cpu | reference")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def config_from_args(args) -> "TrainConfig":  # noqa: F821
    from sigma_ros.training.config import TrainConfig, load_yaml_config, parse_hw

    opts = load_yaml_config(args.config) if getattr(args, "config", None) else {}
    fields = TrainConfig.fields()
    for key, value in vars(args).items():
        if key in ("config", "resume", "command", "_module") or value is None:
            continue
        if key == "crop":
            value = parse_hw(value)
        if key == "eval_split" and value == "":
            value = None
        if key in fields:
            opts[key] = value
    return TrainConfig.from_dict(opts, where=args.config or "command line")


def run(args) -> int:
    from sigma_ros.training.data import DatasetError
    from sigma_ros.training.trainer import TrainError, Trainer

    try:
        cfg = config_from_args(args)
        Trainer(cfg, resume=args.resume).run()
    except (ValueError, FileExistsError, FileNotFoundError, TrainError) as e:
        kind = "dataset error" if isinstance(e, DatasetError) else "error"
        print(f"sigma-ros train: {kind}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nsigma-ros train: interrupted; continue with the same command plus --resume "
              f"(from the last saved step in {args.out}/state.pt)", file=sys.stderr)
        return 130
    return 0
