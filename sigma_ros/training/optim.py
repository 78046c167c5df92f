"""Optimiser parameter groups and the warm-up + poly learning-rate schedule of the official recipe."""
from __future__ import annotations

import torch
from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
          nn.InstanceNorm2d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# SSM parameters that weight decay would pull towards meaningless values (mamba marks them _no_weight_decay).
_NO_DECAY_NAMES = ("A_log", "A_logs", "Ds", "D_1", "D_2", "D")


def _no_decay(name: str, p: nn.Parameter, norm_params: set[int]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return (p.ndim <= 1 or id(p) in norm_params or "bias" in leaf or leaf in _NO_DECAY_NAMES
            or leaf.startswith("A_log") or getattr(p, "_no_weight_decay", False))


def param_groups(model: nn.Module, weight_decay: float, official: bool = False) -> tuple[list[dict], dict]:
    """AdamW parameter groups.

    Default: every trainable parameter is optimised; weights are decayed, while biases, norm parameters, 1-D
    parameters (e.g. the decoder's scale vectors) and the SSM A_log/D parameters are not.

    ``official=True`` reproduces the official ``group_weight``: only weights/biases of Linear, Conv and Norm
    modules are optimised; parameters registered directly on other modules (SS2D x_proj/dt_proj/A_logs/Ds, the
    fusion blocks' A/D, decoder scale1/scale2 -- about 6.4M for Sigma-T) stay at their initial values.

    Returns (groups, info) where info counts optimised and left-out parameters.
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    if official:
        seen = set()
        for m in model.modules():
            if isinstance(m, (nn.Linear, *_CONVS)):
                decay.append(m.weight)
                if m.bias is not None:
                    no_decay.append(m.bias)
            elif isinstance(m, _NORMS):
                no_decay += [p for p in (m.weight, m.bias) if p is not None]
        # A module may appear twice (shared); keep each parameter once.
        decay = [p for p in decay if not (id(p) in seen or seen.add(id(p)))]
        no_decay = [p for p in no_decay if not (id(p) in seen or seen.add(id(p)))]
    else:
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if _no_decay(name, p, norm_params) else decay).append(p)
    chosen = {id(p) for p in decay + no_decay}
    left_out = [(n, p) for n, p in model.named_parameters() if id(p) not in chosen]
    info = {
        "optimised_params": sum(p.numel() for p in decay + no_decay),
        "decayed_params": sum(p.numel() for p in decay),
        "left_out_params": sum(p.numel() for _, p in left_out),
        "left_out_tensors": len(left_out),
        "left_out_names": [n for n, _ in left_out],
    }
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]], info


def warmup_poly_factor(step: int, total_steps: int, warmup_steps: int, power: float = 0.9) -> float:
    """LR multiplier at optimiser step ``step`` (0-based): linear warm-up, then (1 - step/total)^power.

    The official WarmUpPolyLR starts warm-up at exactly 0 (its first step is a no-op); we use (step+1)/warmup so
    the first step already learns. After warm-up the official poly formula is kept as is.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1.0 - step / max(1, total_steps)) ** power


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), official: bool = False,
                    fused: bool | None = None):
    """AdamW over :func:`param_groups`. ``fused`` None: the fused kernel where this torch has it (CPU and CUDA;
    several times faster than the per-tensor loop on CPU), else the default implementation."""
    groups, info = param_groups(model, weight_decay, official=official)
    kw = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if fused is not False:
        try:
            return torch.optim.AdamW(groups, fused=True, **kw), info
        except (RuntimeError, TypeError, ValueError):
            if fused:
                raise
    return torch.optim.AdamW(groups, **kw), info
