"""Reading and writing Sigma checkpoints.

Two formats load:
- the project's own (written by :func:`save_checkpoint`): ``{"format": "sigma_ros/1", "config", "state_dict",
  "class_names", "palette", "preprocessing", "extra"}``;
- the authors' (``{"model": state_dict, "optimizer", ...}`` or a bare state dict, keys possibly prefixed with
  ``module.``): the architecture is read off the keys and shapes, so no variant needs to be named.
Everything goes through ``torch.load(..., weights_only=True)``: no pickled code is ever executed.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import SigmaConfig
from .sigma import Sigma, build_sigma

FORMAT = "sigma_ros/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass
class Checkpoint:
    model: Sigma
    config: SigmaConfig
    path: str
    class_names: list[str] | None = None
    palette: np.ndarray | None = None  # (K, 3) uint8
    preprocessing: str | None = None  # None for official checkpoints: they were trained with the "official" profile
    extra: dict = field(default_factory=dict)
    official: bool = False


def save_checkpoint(path, model: nn.Module, cfg: SigmaConfig, *, class_names=None, palette=None,
                    preprocessing: str = "rgb", extra: dict | None = None) -> Path:
    """Write a self-describing checkpoint atomically (a crash never leaves a half-written file at ``path``)."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    payload = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "state_dict": state,
        "class_names": list(class_names) if class_names is not None else None,
        "palette": np.asarray(palette, dtype=np.uint8).tolist() if palette is not None else None,
        "preprocessing": preprocessing,
        "extra": dict(extra or {}),
    }
    if class_names is not None and len(class_names) != cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {cfg.num_classes}-class model")
    atomic_torch_save(payload, path)
    return path


def atomic_torch_save(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path, *, variant: str | None = None, num_classes: int | None = None,
                    map_location="cpu") -> Checkpoint:
    """Load a project or official checkpoint into a ready model (eval mode, on ``map_location``).

    ``variant`` ('tiny'|'small'|'base'|...) and ``num_classes`` are checks: a checkpoint of another architecture or
    class count fails with a message listing what differs.
    """
    path = Path(path)
    raw = read_checkpoint_file(path)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        try:
            cfg = SigmaConfig.from_dict(raw["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: invalid model config in checkpoint: {e}") from None
        state, official = raw["state_dict"], False
    else:
        state, official = official_state_dict(raw, path), True
        cfg = infer_config(state, path)
    expected = cfg
    if variant is not None:
        try:
            expected = SigmaConfig.from_variant(variant, num_classes=cfg.num_classes)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
    if num_classes is not None and num_classes != cfg.num_classes:
        raise CheckpointError(
            f"{path}: the checkpoint predicts {cfg.num_classes} classes but the class configuration has {num_classes}"
        )
    model = build_sigma(expected)
    _check_state_dict(model, state, path, what=f"Sigma-{expected.variant}")
    model.load_state_dict(state, strict=True)
    model.eval().to(map_location)
    ck = Checkpoint(model=model, config=expected, path=str(path), official=official)
    if not official:
        ck.class_names = raw.get("class_names")
        ck.palette = np.asarray(raw["palette"], dtype=np.uint8) if raw.get("palette") is not None else None
        ck.preprocessing = raw.get("preprocessing")
        ck.extra = raw.get("extra") or {}
    return ck


def read_checkpoint_file(path: Path):
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path}: is a Git LFS pointer, not the weights; download the real file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for garbage input
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def official_state_dict(raw, path) -> dict[str, torch.Tensor]:
    """The model weights inside an official checkpoint: 'model' / 'state_dict' / 'module' entry or the dict itself."""
    if isinstance(raw, dict):
        for key in ("model", "state_dict", "module"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors or one under 'model')")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def infer_config(state: dict[str, torch.Tensor], path) -> SigmaConfig:
    """Read the architecture off an official state dict's keys and shapes."""

    def shape(key):
        if key not in state:
            raise CheckpointError(f"{path}: not a Sigma checkpoint (missing key {key!r})")
        return state[key].shape

    def count(prefix):
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        return len({m.group(1) for k in state if (m := pattern.match(k))})

    embed_dim = shape("backbone.vssm.patch_embed.0.weight")[0]
    depths = tuple(count(f"backbone.vssm.layers.{i}.blocks.") for i in range(4))
    decoder_depths = tuple(count(f"decode_head.layers_up.{3 - i}.blocks.") for i in range(3))
    enc_in = shape("backbone.vssm.layers.0.blocks.0.op.in_proj.weight")
    try:
        cfg = SigmaConfig(
            embed_dim=embed_dim,
            depths=depths,
            decoder_depths=decoder_depths,
            num_classes=shape("decode_head.output.weight")[0],
            d_state=shape("backbone.vssm.layers.0.blocks.0.op.A_logs")[1],
            fusion_d_state=shape("backbone.cross_mamba.0.op.CMA_ssm.A_log_1")[1],
            decoder_d_state=shape("decode_head.layers_up.3.blocks.0.op.A_logs")[1],
            ssm_ratio=enc_in[0] / 2 / enc_in[1],
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: not a usable Sigma architecture: {e}") from None
    # Training-only settings are not in the weights: take them from the matching preset.
    variant = cfg.variant
    return cfg if variant == "custom" else SigmaConfig.from_variant(variant, num_classes=cfg.num_classes)


def _check_state_dict(model: nn.Module, state: dict, path, what: str, limit: int = 12) -> None:
    """Fail with a readable list of missing / unexpected / mis-shaped keys before load_state_dict would."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            problems.append(f"{len(items)} {title}: " + ", ".join(items[:limit]) + more)
    if problems:
        raise CheckpointError(f"{path}: does not match {what}:\n  " + "\n  ".join(problems))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), nn.Module):
            model = getattr(model, attr)
    return model


# ------------------------------------------------------------------------------------------------------------------
# VMamba ImageNet weights -> encoder (training initialisation)
# ------------------------------------------------------------------------------------------------------------------
_VMAMBA_RENAMES = [  # VMamba v0 ('init' release) names -> the names Sigma's encoder uses
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"\.ln_1\."), ".norm."),
    (re.compile(r"\.self_attention\."), ".op."),
]


@dataclass
class PretrainedReport:
    loaded: int
    missing: list[str]
    skipped: list[str]

    def __str__(self) -> str:
        return (f"loaded {self.loaded} encoder tensors; {len(self.missing)} left at init "
                f"({', '.join(self.missing[:6])}{' ...' if len(self.missing) > 6 else ''}); "
                f"{len(self.skipped)} checkpoint tensors not used (classifier head etc.)")


def load_vmamba_imagenet(model: Sigma, path) -> PretrainedReport:
    """Initialise the shared encoder from a VMamba (v0) ImageNet checkpoint, e.g. vssmtiny_dp01_ckpt_epoch_292.pth.

    Unlike the official loader, a missing file, an LFS pointer or an architecture mismatch is an error, not a print.
    """
    path = Path(path)
    raw = read_checkpoint_file(path)
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no 'model' state dict in this VMamba checkpoint")
    target = unwrap_model(model).backbone.vssm.state_dict()
    renamed, skipped, mismatched = {}, [], []
    for key, value in state.items():
        new = key.removeprefix("module.")
        for pattern, repl in _VMAMBA_RENAMES:
            new = pattern.sub(repl, new)
        if new not in target:
            skipped.append(key)
        elif tuple(target[new].shape) != tuple(value.shape):
            mismatched.append(f"{key}: {tuple(value.shape)} vs encoder {tuple(target[new].shape)}")
        else:
            renamed[new] = value
    if mismatched:
        raise CheckpointError(f"{path}: VMamba weights do not fit this encoder (another variant?): "
                              + "; ".join(mismatched[:8]))
    if not renamed:
        raise CheckpointError(f"{path}: no VMamba encoder weights found in this checkpoint")
    unwrap_model(model).backbone.vssm.load_state_dict(renamed, strict=False)
    missing = [k for k in target if k not in renamed]
    return PretrainedReport(loaded=len(renamed), missing=missing, skipped=skipped)
