"""The Sigma trainer: the official recipe (AdamW, warm-up + poly LR, CE with ignore 255, flip/scale/crop) with
bf16 autocast on GPU, gradient accumulation, DDP under torchrun, and exact resume.

Run folder layout (only rank 0 writes):
  state.pt      everything needed to resume (model, optimiser, scheduler, grad scaler, RNG states of every rank,
                data position, metric history, the resolved config); written atomically.
  last.pt       the latest weights as a node-loadable checkpoint (save_checkpoint), best.pt the best by eval mIoU.
  config.yaml   the resolved training configuration;  metrics.csv;  curves.png;  tb/ (TensorBoard events).

Resuming (``--resume``) restores state.pt and continues from its step; data order and augmentation are functions
of (seed, epoch, index) and the RNG states are restored at the same step boundary, so a resumed run produces the
same weights as one that was never interrupted.
"""
from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from torch import nn

from ..model.checkpoint import atomic_torch_save
from .augment import IGNORE_INDEX, scale_choices
from .config import TrainConfig
from .data import DatasetError, EpochBatches, EvalSet, TrainSet, collate_train, open_split, worker_init
from .distributed import DistInfo, all_reduce_sum, barrier, gather_objects, init_distributed, shutdown
from .evaluate import EvalOptions, evaluate
from .optim import build_optimizer, warmup_poly_factor
from .step import compile_for_training, enable_activation_checkpointing, train_step

STATE_FILE = "state.pt"


class TrainError(RuntimeError):
    """A run that cannot start or continue; the message says why."""


# ------------------------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------------------------
def resolve_device(spec: str, dist: DistInfo) -> torch.device:
    spec = (spec or "auto").lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"device {spec!r} requested but CUDA is not available (torch {torch.__version__})")
        if dist.enabled or spec == "cuda":
            return torch.device("cuda", dist.local_rank if dist.enabled else torch.cuda.current_device())
    return torch.device(spec)


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def resolve_classes(cfg: TrainConfig, train_base, init_ck=None) -> tuple[list[str], np.ndarray, dict]:
    """Class names and palette: config `classes` > dataset metadata > init checkpoint > labels' max value + 1."""
    from sigma_ros.classes import load_class_config
    from sigma_ros.postprocess import voc_palette

    info: dict = {}
    spec = cfg.classes
    if isinstance(spec, dict):
        names = [str(n) for n in spec.get("names", spec.get("class_names", []))]
        if not names:
            raise ValueError("training config: 'classes' mapping needs a 'names' list")
        palette = spec.get("palette")
        palette = voc_palette(len(names)) if palette is None else np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        info["source"] = "config"
    elif spec:
        cc = load_class_config(spec)
        names, palette = list(cc.class_names), cc.palette
        info.update(source=f"class config {spec}", modality=cc.modality)
    elif cfg.data and (Path(cfg.data) / "classes.yaml").is_file():  # written by extract / the synthetic generator
        cc = load_class_config(Path(cfg.data) / "classes.yaml")
        names, palette = list(cc.class_names), cc.palette
        info.update(source=f"{Path(cfg.data) / 'classes.yaml'}", modality=cc.modality)
    elif getattr(train_base, "class_names", None):
        names = list(train_base.class_names)
        palette = getattr(train_base, "palette", None)
        palette = voc_palette(len(names)) if palette is None else np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        info["source"] = "dataset"
    elif init_ck is not None and init_ck.class_names and (cfg.num_classes in (None, len(init_ck.class_names))):
        names = list(init_ck.class_names)
        palette = init_ck.palette if init_ck.palette is not None else voc_palette(len(names))
        info["source"] = f"init checkpoint {init_ck.path}"
    else:
        n = cfg.num_classes or _max_label(train_base) + 1
        names, palette = [f"class_{i}" for i in range(n)], voc_palette(n)
        info["source"] = "labels" if not cfg.num_classes else "num_classes"
    if cfg.num_classes is not None and cfg.num_classes != len(names):
        raise ValueError(f"num_classes={cfg.num_classes} but the class list ({info['source']}) has {len(names)} names")
    return names, np.asarray(palette[: len(names)], dtype=np.uint8), info


def _max_label(base) -> int:
    top = -1
    for i in range(len(base)):
        label = base[i].get("label")
        if label is None:
            raise DatasetError(f"training sample {base[i].get('name', i)!r} has no label")
        valid = np.asarray(label)[np.asarray(label) != IGNORE_INDEX]
        if valid.size:
            top = max(top, int(valid.max()))
    if top < 0:
        raise DatasetError("every training label pixel is 255 (ignore): nothing to learn")
    return top


# ------------------------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class TrainSummary:
    steps: int
    seconds: float
    images_per_s: float
    final_loss: float
    best_miou: float | None
    best_step: int | None
    last_miou: float | None
    run_dir: str
    peak_memory_gib: float | None = None
    history: list = field(default_factory=list)

    def text(self) -> str:
        lines = [f"trained {self.steps} steps in {self.seconds / 60:.1f} min ({self.images_per_s:.2f} img/s)",
                 f"final loss {self.final_loss:.4f}"]
        if self.best_miou is not None:
            lines.append(f"best mIoU {100 * self.best_miou:.2f} at step {self.best_step}; last mIoU "
                         f"{100 * (self.last_miou or 0):.2f}")
        if self.peak_memory_gib is not None:
            lines.append(f"peak GPU memory {self.peak_memory_gib:.2f} GiB")
        run = Path(self.run_dir)
        lines.append(f"checkpoints: {run / 'last.pt'}" + (f", {run / 'best.pt'}" if (run / 'best.pt').exists() else ""))
        lines.append(f"metrics: {run / 'metrics.csv'}, {run / 'curves.png'}, TensorBoard: {run / 'tb'}")
        return "\n".join(lines)


class Trainer:
    """``Trainer(cfg, resume=...).run()`` trains and returns a TrainSummary.

    ``hooks`` are called as ``hook(trainer, step)`` after every optimiser step (tests use them to simulate crashes).
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False,
                 hooks: list[Callable[["Trainer", int], None]] | None = None, log: Callable[[str], None] = print):
        cfg.validate()
        self.cfg, self.resume_requested, self.hooks, self._log = cfg, resume, list(hooks or []), log
        self.run_dir = Path(cfg.out)
        self.dist = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device, self.dist)
        self.step = 0
        self.micro = 0  # micro-batches consumed by every process (data position)
        self.history: list[dict] = []
        self.best_miou: float | None = None
        self.best_step: int | None = None
        self.last_miou: float | None = None
        self.tb = None

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    # -- setup ------------------------------------------------------------------------------------------------------
    def _load_resume_state(self) -> dict | None:
        path = self.run_dir / STATE_FILE
        if not path.exists():
            if self.resume_requested:
                self.log(f"--resume: no {path} yet, starting a new run")
            return None
        if not self.resume_requested:
            raise FileExistsError(f"{self.run_dir} already holds a training run ({STATE_FILE}); pass --resume to "
                                  f"continue it or choose another --out")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TrainError(f"{path}: cannot read the resume state ({e}); delete it to start over") from None

    def setup(self) -> None:
        cfg = self.cfg
        state = self._load_resume_state()
        if state is not None:
            saved = TrainConfig.from_dict(state["config"], where=str(self.run_dir / STATE_FILE))
            # Keep the run's recipe; allow runtime knobs (and a longer run) to change.
            for k in ("max_steps", "device", "workers", "threads", "eval_every", "save_every", "log_every",
                      "progress", "tensorboard", "eval_max_images", "data", "out", "compile", "cuda_graphs"):
                setattr(saved, k, getattr(cfg, k) if getattr(cfg, k) is not None else getattr(saved, k))
            self.cfg = cfg = saved
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        if cfg.scan_backend:
            os.environ["SIGMA_SCAN_BACKEND"] = cfg.scan_backend
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = bool(cfg.tf32)
            torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)
            torch.backends.cudnn.benchmark = True
        self.amp = bool(cfg.amp) if cfg.amp is not None else self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
        # Per-rank seeds (stochastic depth differs between processes); DDP broadcasts rank 0's initial weights.
        torch.manual_seed(cfg.seed + self.dist.rank)
        np.random.seed((cfg.seed + self.dist.rank) % 2**32)
        random.seed(cfg.seed + self.dist.rank)

        from sigma_ros.model import SigmaConfig, build_sigma, load_checkpoint, load_vmamba_imagenet

        # data
        self.train_base = open_split(cfg.data, cfg.train_split)
        init_ck = None
        if cfg.init_checkpoint and state is None:
            init_ck = load_checkpoint(cfg.init_checkpoint)
        if state is not None:
            self.class_names, self.palette = list(state["class_names"]), np.asarray(state["palette"], np.uint8)
            class_info = {"source": "resume state"}
        else:
            self.class_names, self.palette, class_info = resolve_classes(cfg, self.train_base, init_ck)
        num_classes = len(self.class_names)
        if cfg.modality is None:
            cfg.modality = getattr(self.train_base, "modality", None) or class_info.get("modality") or "thermal"
        if cfg.preprocessing is None:
            if init_ck is not None:
                cfg.preprocessing = init_ck.preprocessing or ("official" if init_ck.official else "rgb")
            else:
                cfg.preprocessing = "rgb"
        self.eval_base = None
        if cfg.eval_split:
            try:
                self.eval_base = open_split(cfg.data, cfg.eval_split)
            except DatasetError as e:
                self.log(f"note: no evaluation during training: the {cfg.eval_split!r} split is not usable ({e})")

        # model
        if init_ck is not None:
            arch = init_ck.config
            self.model_cfg = SigmaConfig.from_dict({**arch.to_dict(), "num_classes": num_classes, **cfg.model})
            if cfg.variant != arch.variant and arch.variant != "custom":
                self.log(f"note: fine-tuning keeps the init checkpoint's architecture (Sigma-{arch.variant})")
        elif state is not None:
            self.model_cfg = SigmaConfig.from_dict(state["model_config"])
        else:
            self.model_cfg = SigmaConfig.from_variant(cfg.variant, num_classes=num_classes, **cfg.model)
        model = build_sigma(self.model_cfg)
        if state is None:
            if cfg.pretrained:
                report = load_vmamba_imagenet(model, cfg.pretrained)
                self.log(f"ImageNet init from {cfg.pretrained}: {report}")
            if init_ck is not None:
                self._load_init_weights(model, init_ck)
        model.to(self.device)
        if cfg.checkpointing:
            n = enable_activation_checkpointing(model, cfg.checkpointing)
            self.log(f"activation checkpointing ({cfg.checkpointing}): {n} blocks recompute their activations in "
                     f"backward")
        self.model = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           broadcast_buffers=False, gradient_as_bucket_view=True)
        else:
            self.ddp = model
        on_gpu = self.device.type == "cuda"
        self.scan_bf16 = cfg.scan_bf16 if cfg.scan_bf16 is not None else on_gpu
        self.triton_scans = on_gpu and cfg.triton_scans is not False
        if cfg.triton_scans and not on_gpu:
            self.log("note: --triton-scans applies on a GPU only; on the CPU the scans keep the numba backend")
        self.compiled = cfg.compile if cfg.compile is not None else on_gpu
        if self.compiled and cfg.checkpointing:
            # Measured on the GPU: with the checkpoints traced into the graph the loss went NaN within ten steps (an
            # H200 and an H100, again after the saved-tensors fix), though one step's gradients are finite at every
            # compile stage (bench/check_compiled_gradients.py) and five steps through aot_eager stay finite: it
            # needs Inductor's GPU code. Until that is explained, checkpointing (memory) wins over compile (speed).
            self.log("note: torch.compile is off: it does not combine with activation checkpointing yet")
            self.compiled = False
        self.cuda_graphs = bool(cfg.cuda_graphs) and self.compiled
        if cfg.cuda_graphs and not self.cuda_graphs:
            self.log("note: --cuda-graphs needs torch.compile; it is off")
        elif self.cuda_graphs and (not on_gpu or self.dist.enabled or cfg.accum_steps > 1):
            why = "a GPU" if not on_gpu else "one process" if self.dist.enabled else "no gradient accumulation"
            self.log(f"note: --cuda-graphs needs {why}; it is off")
            self.cuda_graphs = False
        if self.compiled:  # training steps only: evaluation and checkpoints use the plain module
            self.ddp = compile_for_training(self.ddp, self.device, cuda_graphs=self.cuda_graphs)

        # schedule
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by the {self.dist.world_size} processes")
        self.local_batch = cfg.batch_size // self.dist.world_size
        self.batches = EpochBatches(len(self.train_base), self.local_batch, cfg.seed, self.dist.world_size,
                                    self.dist.rank)
        if cfg.max_steps is None:
            cfg.max_steps = max(1, math.ceil(cfg.epochs * self.batches.per_epoch / cfg.accum_steps))
        self.max_steps = int(cfg.max_steps)
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_ratio * self.max_steps))
        self.eval_every = cfg.eval_every or max(1, self.max_steps // 10)
        self.save_every = cfg.save_every or min(self.eval_every, 500)

        self.optimizer, self.param_info = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas,
                                                          official=cfg.official_param_groups)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_poly_factor(s, self.max_steps, self.warmup, cfg.poly_power))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16
                                           and self.device.type == "cuda")
        if state is not None:
            self._restore(state)
        self.class_info = class_info

        # loader
        self.train_set = TrainSet(self.train_base, crop=cfg.crop, profile=cfg.preprocessing, modality=cfg.modality,
                                  depth_range=cfg.depth_range, scales=scale_choices(cfg.scale_range, cfg.scale_step),
                                  scale_range=cfg.scale_range, flip=cfg.flip, seed=cfg.seed, blank=cfg.blank,
                                  num_classes=num_classes, root=cfg.data)
        workers = cfg.workers
        if workers is None:
            workers = 0 if self.device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) // self.dist.world_size))
        self.workers = workers
        self.batches.start = self.micro
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_sampler=self.batches, num_workers=workers, collate_fn=collate_train,
            pin_memory=self.device.type == "cuda", worker_init_fn=worker_init if workers else None,
            persistent_workers=False, prefetch_factor=4 if workers else None,
            generator=torch.Generator().manual_seed(cfg.seed))  # keeps the global RNG untouched
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(
                {**cfg.to_dict(), "model_config": self.model_cfg.to_dict(), "class_names": self.class_names},
                sort_keys=False))
            self._write_node_config()

    def _write_node_config(self) -> None:
        """RUN_DIR/node_config.yaml: ROS 2 params file + class config for the node, like config/mfnet.yaml, so
        ``ros2 launch sigma_ros rgbt_segmentation.launch.py checkpoint:=RUN/best.pt config:=RUN/node_config.yaml``
        runs the trained model with its classes, palette, modality and preprocessing."""
        cfg = self.cfg
        params = {"dataset": self.run_dir.name, "modality": cfg.modality}
        if cfg.modality == "depth":
            params["depth_range"] = [float(v) for v in cfg.depth_range]
        params.update({"preprocessing": cfg.preprocessing, "input_size": "native", "overlay_alpha": 0.5,
                       "sync": {"slop": 0.05, "queue_size": 10}, "class_names": list(self.class_names),
                       # ROS parameters cannot nest lists: RGB triplets flattened, as in config/*.yaml
                       "palette": [int(v) for v in self.palette.reshape(-1)]})
        head = (f"# Written by sigma-ros train for the checkpoints in this folder: ROS 2 parameters for the\n"
                f"# sigma_segmentation node AND a class config. Use it with\n"
                f"#   ros2 launch sigma_ros rgb{'d' if cfg.modality == 'depth' else 't'}_segmentation.launch.py "
                f"checkpoint:={self.run_dir / 'best.pt'} config:={self.run_dir / 'node_config.yaml'}\n")
        (self.run_dir / "node_config.yaml").write_text(
            head + yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=False, default_flow_style=None))

    def _load_init_weights(self, model: nn.Module, ck) -> None:
        src = ck.model.state_dict()
        own = model.state_dict()
        take = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(own) - set(take))
        model.load_state_dict(take, strict=False)
        self.log(f"initialised from {ck.path}: {len(take)} tensors"
                 + (f"; re-initialised {', '.join(skipped)} (class count differs)" if skipped else ""))

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.micro = int(state["step"]), int(state["micro"])
        self.history = list(state.get("history", []))
        self.best_miou, self.best_step = state.get("best_miou"), state.get("best_step")
        self.last_miou = state.get("last_miou")
        rngs = state["rng"]
        if len(rngs) != self.dist.world_size:
            raise TrainError(f"the run was saved with {len(rngs)} processes but now runs with "
                               f"{self.dist.world_size}; resume with the same number of processes")
        self._pending_rng = rngs[self.dist.rank]
        self.log(f"resumed {self.run_dir} at step {self.step}/{self.cfg.max_steps}")

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def _node_extra(self) -> dict:
        cfg = self.cfg
        return {"modality": cfg.modality, "depth_range": list(cfg.depth_range), "blank": cfg.blank,
                "crop": list(cfg.crop), "step": self.step, "mIoU": self.last_miou, "best_mIoU": self.best_miou,
                "dataset": str(cfg.data), "train_config": cfg.to_dict()}

    def save(self, best: bool = False) -> None:
        """Resume state + last.pt (and best.pt); collective under DDP (every rank sends its RNG state)."""
        from sigma_ros.model import save_checkpoint

        rngs = gather_objects(_rng_state(self.device), self.dist)
        if self.dist.is_main:
            state = {
                "config": self.cfg.to_dict(), "model_config": self.model_cfg.to_dict(),
                "class_names": self.class_names, "palette": self.palette.tolist(),
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "step": self.step, "micro": self.micro, "history": self.history, "rng": rngs,
                "best_miou": self.best_miou, "best_step": self.best_step, "last_miou": self.last_miou,
            }
            atomic_torch_save(state, self.run_dir / STATE_FILE)  # first: resume never sees a newer last.pt than state
            kw = dict(class_names=self.class_names, palette=self.palette, preprocessing=self.cfg.preprocessing,
                      extra=self._node_extra())
            save_checkpoint(self.run_dir / "last.pt", self.model, self.model_cfg, **kw)
            if best:
                save_checkpoint(self.run_dir / "best.pt", self.model, self.model_cfg, **kw)
        barrier(self.dist)

    # -- evaluation -------------------------------------------------------------------------------------------------
    def run_eval(self):
        cfg = self.cfg
        n = len(self.eval_base)
        if cfg.eval_max_images:
            n = min(n, int(cfg.eval_max_images))
        idx = list(range(n))[self.dist.rank::self.dist.world_size]
        samples = EvalSet(self.eval_base, profile=cfg.preprocessing, modality=cfg.modality,
                          depth_range=cfg.depth_range, blank=cfg.blank, root=cfg.data, indices=idx)
        self.model.eval()
        opts = EvalOptions(amp_dtype=self.amp_dtype if self.amp else None)
        res = evaluate(self.model, samples, len(self.class_names), self.device, opts, self.class_names)
        self.model.train()
        conf = torch.as_tensor(res.metrics.confusion, device=self.device)
        all_reduce_sum(conf, self.dist)
        res.metrics.confusion = conf.cpu().numpy()
        return res.metrics

    # -- logging ----------------------------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        if not self.dist.is_main:
            return
        self.csv_path = self.run_dir / "metrics.csv"
        fields = ["step", "epoch", "loss", "lr", "images_per_s", "mIoU", "pixel_acc", "time_s"]
        with open(self.csv_path, "w", newline="") as f:  # rewritten from history: rows after a crash vanish
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for row in self.history:
                w.writerow({k: row.get(k, "") for k in fields})
        self.csv_fields = fields
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step if self.step else None)
            except Exception as e:  # tensorboard missing or broken: keep training
                self.log(f"note: TensorBoard logging off ({e})")
                self.tb = None

    def _record(self, row: dict) -> None:
        self.history.append(row)
        if not self.dist.is_main:
            return
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.csv_fields).writerow({k: row.get(k, "") for k in self.csv_fields})
        if self.tb is not None:
            for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("images_per_s", "train/images_per_s"),
                             ("mIoU", "eval/mIoU"), ("pixel_acc", "eval/pixel_acc")):
                if row.get(key) not in (None, ""):
                    self.tb.add_scalar(tag, row[key], row["step"])
            self.tb.flush()

    def plot(self) -> None:
        if self.dist.is_main:
            from .plots import plot_curves

            plot_curves(self.history, self.run_dir / "curves.png")

    # -- the loop ---------------------------------------------------------------------------------------------------
    def run(self) -> TrainSummary:
        try:
            self.setup()
            return self._train()
        finally:
            if self.tb is not None:
                self.tb.close()
            shutdown(self.dist)

    def _train(self) -> TrainSummary:
        cfg = self.cfg
        self._open_logs()
        pi = self.param_info
        self.log(f"Sigma-{self.model_cfg.variant} ({sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M "
                 f"params), {len(self.class_names)} classes ({self.class_info['source']}), "
                 f"{len(self.train_base)} training samples, device {self.device}"
                 + (f" x{self.dist.world_size} (DDP)" if self.dist.enabled else "")
                 + f", {'bf16' if self.amp_dtype == torch.bfloat16 else 'fp16'} autocast" * self.amp
                 + ", torch.compile (the first step compiles: minutes on a first run)" * self.compiled
                 + ", low-precision scan inputs" * (self.scan_bf16 and self.amp)
                 + ", Triton scans with their own backward" * self.triton_scans
                 + f"\noptimising {pi['optimised_params'] / 1e6:.2f}M params"
                 + (f"; official groups leave {pi['left_out_params'] / 1e6:.2f}M params "
                    f"({pi['left_out_tensors']} tensors) untrained" if cfg.official_param_groups else " (all)")
                 + f"; {self.max_steps} steps of {cfg.batch_size}x{cfg.accum_steps} crops {cfg.crop[0]}x{cfg.crop[1]}, "
                   f"warm-up {self.warmup}, eval every {self.eval_every}")
        if getattr(self, "_pending_rng", None) is not None:
            _set_rng_state(self._pending_rng, self.device)  # last thing before the loop, as when it was saved
            self._pending_rng = None
        self.ddp.train()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        it = iter(self.loader)
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        t_start = time.perf_counter()
        t_log, steps_log = t_start, 0
        loss_acc = torch.zeros((), device=self.device)
        last_loss = float("nan")
        start_step = self.step
        while self.step < self.max_steps:
            lr = self.optimizer.param_groups[0]["lr"]
            step_loss = train_step(self.ddp, self.optimizer, it, self.device, accum_steps=cfg.accum_steps,
                                   amp_dtype=self.amp_dtype if self.amp else None, scaler=self.scaler,
                                   grad_clip=cfg.grad_clip, ddp=self.dist.enabled, scan_bf16=self.scan_bf16,
                                   triton_scans=self.triton_scans, cuda_graphs=self.cuda_graphs,
                                   params=self.model.parameters())
            self.scheduler.step()
            self.step += 1
            self.micro += cfg.accum_steps
            loss_acc += step_loss
            steps_log += 1
            if bar is not None:
                bar.update(1)

            do_eval = self.eval_base is not None and (self.step % self.eval_every == 0 or self.step == self.max_steps)
            if self.step % cfg.log_every == 0 or do_eval or self.step == self.max_steps:
                all_reduce_sum(loss_acc, self.dist)
                last_loss = loss_acc.item() / steps_log / self.dist.world_size
                now = time.perf_counter()
                row = {"step": self.step, "epoch": round(self.micro / self.batches.per_epoch, 3),
                       "loss": round(last_loss, 6), "lr": lr,
                       "images_per_s": round(steps_log * cfg.batch_size * cfg.accum_steps / max(now - t_log, 1e-9), 3),
                       "time_s": round(now - t_start, 2)}
                if do_eval:
                    m = self.run_eval()
                    self.last_miou = m.miou
                    row.update(mIoU=round(m.miou, 6), pixel_acc=round(m.pixel_accuracy, 6))
                self._record(row)
                if bar is not None:
                    post = {"loss": f"{last_loss:.4f}", "lr": f"{lr:.2e}"}
                    if self.last_miou is not None:
                        post["mIoU"] = f"{100 * self.last_miou:.1f}"
                    bar.set_postfix(post)
                loss_acc.zero_()
                steps_log, t_log = 0, time.perf_counter()
                best = False
                if do_eval and (self.best_miou is None or self.last_miou > self.best_miou):
                    self.best_miou, self.best_step, best = self.last_miou, self.step, True
                if do_eval:
                    self.plot()
                if best or self.step % self.save_every == 0 or self.step == self.max_steps:
                    self.save(best=best)
            elif self.step % self.save_every == 0:
                self.save()
            for hook in self.hooks:
                hook(self, self.step)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t_start
        self.plot()
        done = self.step - start_step
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        summary = TrainSummary(steps=self.step, seconds=seconds,
                               images_per_s=done * cfg.batch_size * cfg.accum_steps / max(seconds, 1e-9),
                               final_loss=last_loss, best_miou=self.best_miou, best_step=self.best_step,
                               last_miou=self.last_miou, run_dir=str(self.run_dir), peak_memory_gib=peak,
                               history=list(self.history))
        if self.dist.is_main:
            (self.run_dir / "summary.txt").write_text(summary.text() + "\n")
        self.log(summary.text())
        return summary


def train(cfg: TrainConfig, resume: bool = False, **kw) -> TrainSummary:
    return Trainer(cfg, resume=resume, **kw).run()
