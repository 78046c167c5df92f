"""Training configuration: one dataclass, loadable from YAML, overridable from the command line."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    # data and output
    data: str = ""
    out: str = ""
    train_split: str = "train"
    eval_split: str | None = "test"  # None/"" disables evaluation during training
    # model
    variant: str = "tiny"  # micro | tiny | small | base
    model: dict = field(default_factory=dict)  # SigmaConfig overrides, e.g. {embed_dim: 48, depths: [1,1,2,1]}
    num_classes: int | None = None  # default: from the class config, else the largest label value + 1
    classes: Any = None  # dataset key ("mfnet"), class YAML path, or {names: [...], palette: [[r,g,b], ...]}
    pretrained: str | None = None  # VMamba ImageNet checkpoint (.pth) for the encoder
    init_checkpoint: str | None = None  # Sigma checkpoint to fine-tune from (ours or official); head may differ
    # inputs
    preprocessing: str | None = None  # "rgb" | "official"; default: the init checkpoint's, else "rgb"
    modality: str | None = None  # thermal | depth; default: the dataset's (manifest, folder names), else thermal
    depth_range: tuple[float, float] = (0.0, 10.0)
    blank: str | None = None  # "x" or "rgb": zero one modality (modality ablation)
    # schedule
    max_steps: int | None = None  # optimiser steps; default: `epochs` worth of steps
    epochs: float = 500.0  # the official recipe's length, used only when max_steps is not given
    batch_size: int = 8  # global batch per optimiser micro-step (split across DDP processes)
    accum_steps: int = 1  # micro-batches per optimiser step (effective batch = batch_size * accum_steps)
    lr: float = 6e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int | None = None  # default: warmup_ratio of max_steps (official: 10 of 500 epochs)
    warmup_ratio: float = 0.02
    poly_power: float = 0.9
    grad_clip: float | None = None
    official_param_groups: bool = False  # reproduce the official optimiser (leaves ~6.4M params untrained)
    # augmentation
    crop: tuple[int, int] = (480, 640)  # (h, w)
    scale_range: tuple[float, float] = (0.5, 1.75)
    scale_step: float = 0.25  # 0.25 = the official scale set {0.5, ..., 1.75}; 0 = continuous
    flip: bool = True
    # runtime
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool | None = None  # bf16 autocast; default on for CUDA, off on CPU
    amp_dtype: str = "bf16"  # bf16 | fp16 (fp16 uses a GradScaler)
    tf32: bool = True  # TF32 matmuls/convs on Ampere+ (fp32 runs only)
    # under autocast, feed the selective scans bf16 inputs (state stays fp32); default on for CUDA
    scan_bf16: bool | None = None
    # GPU: the fused Triton scan and its backward (ops.triton_scan_backward) instead of mamba-ssm's kernels on
    # flipped copies, and the decoder's last norm and classifier as one op (ops.triton_head); default on for CUDA
    # (1.52x eager, 1.31x compiled, less memory on an H100: bench/RESULTS.md)
    triton_scans: bool | None = None
    # recompute block activations in backward: "all" blocks (far less memory, ~1 extra forward) or "high-res" ones
    # (the first stage's resolution: most of the memory for a fraction of the recomputation); true means "all"
    activation_checkpointing: bool | str = False
    # torch.compile the model for training (1.44x on an H100); default on for CUDA unless activation checkpointing
    # is on (the two do not combine yet: bench/RESULTS.md)
    compile: bool | None = None
    # with compile: replay each step's forward and backward as CUDA graphs (torch.compile's "reduce-overhead"), so
    # the thousands of small kernels of a step are not launched one by one from Python. One GPU process and no
    # gradient accumulation only (CUDA-graph trees reuse their output memory between replays, and accumulated
    # .grad buffers would be overwritten: pytorch/pytorch#169545)
    cuda_graphs: bool = False
    seed: int = 3407
    workers: int | None = None  # loader workers per process; default 0 on CPU, min(8, cores) on GPU
    threads: int | None = None  # torch CPU threads
    scan_backend: str | None = None  # selective-scan backend (sets SIGMA_SCAN_BACKEND)
    # logging / checkpoints
    eval_every: int | None = None  # steps; default: 10 evaluations per run
    eval_max_images: int | None = None
    save_every: int | None = None  # steps between resume-state saves; default: eval_every
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True

    # ---------------------------------------------------------------------------------------------------------
    def __post_init__(self):
        for name in ("crop", "scale_range", "betas", "depth_range"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = parse_hw(v) if name == "crop" else tuple(float(t) for t in v.split(","))
            setattr(self, name, tuple(v))
        self.crop = (int(self.crop[0]), int(self.crop[1]))
        if self.blank in ("", "none"):
            self.blank = None

    def validate(self) -> None:
        problems = []
        if not self.data:
            problems.append("no dataset folder (--data)")
        if not self.out:
            problems.append("no run folder (--out)")
        if self.variant not in ("micro", "tiny", "small", "base"):
            problems.append(f"variant must be micro|tiny|small|base, got {self.variant!r}")
        if self.batch_size < 1 or self.accum_steps < 1:
            problems.append("batch_size and accum_steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps must be >= 1")
        if min(self.crop) < 32:
            problems.append(f"crop {self.crop} is too small: Sigma needs at least 32x32")
        if self.blank not in (None, "x", "rgb"):
            problems.append(f"blank must be 'x' or 'rgb', got {self.blank!r}")
        if self.preprocessing not in (None, "rgb", "official"):
            problems.append(f"preprocessing must be 'rgb' or 'official', got {self.preprocessing!r}")
        if self.modality not in (None, "thermal", "depth"):
            problems.append(f"modality must be 'thermal' or 'depth', got {self.modality!r}")
        if self.activation_checkpointing not in (False, True, None, "none", "all", "high-res"):
            problems.append(f"activation_checkpointing must be all, high-res or none, got "
                            f"{self.activation_checkpointing!r}")
        if self.amp_dtype not in ("bf16", "fp16"):
            problems.append(f"amp_dtype must be bf16 or fp16, got {self.amp_dtype!r}")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    @property
    def checkpointing(self) -> str | None:
        """Which blocks activation checkpointing covers: "all", "high-res", or None."""
        v = self.activation_checkpointing
        return "all" if v is True else (v if v in ("all", "high-res") else None)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        unknown = set(d) - cls.fields()
        if unknown:
            raise ValueError(f"{where}: unknown training options {sorted(unknown)}; known: "
                             f"{', '.join(sorted(cls.fields()))}")
        return cls(**d)


def parse_hw(text: str) -> tuple[int, int]:
    """'480x640' or '480,640' -> (480, 640) (height, width)."""
    t = str(text).lower().replace(",", "x").split("x")
    if len(t) != 2:
        raise ValueError(f"expected HxW such as 480x640, got {text!r}")
    try:
        return int(t[0]), int(t[1])
    except ValueError:
        raise ValueError(f"expected HxW such as 480x640, got {text!r}") from None


def load_yaml_config(path: str | Path) -> dict:
    """Read a training YAML file -> dict of options. A top-level ``train:`` section is accepted too."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"config file {path} must hold a mapping of options")
    if "train" in d and isinstance(d["train"], dict):
        d = {**{k: v for k, v in d.items() if k != "train"}, **d["train"]}
    unknown = set(d) - TrainConfig.fields()
    if unknown:
        raise ValueError(f"config file {path}: unknown training options {sorted(unknown)}")
    return d
