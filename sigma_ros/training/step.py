"""One optimiser step of the training recipe, shared by the trainer and ``bench/bench_train.py`` (so the benchmark
times exactly what the trainer runs)."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .augment import IGNORE_INDEX


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the non-ignored pixels (255 = ignore); 0 rather than NaN for an all-ignore batch."""
    valid = (label != IGNORE_INDEX).sum().clamp(min=1)
    return F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="sum") / valid


def _scan_precision(low: bool):
    """bf16 scan inputs (fp32 state inside the kernel) when asked; the model's default casts them to fp32."""
    if not low:
        return nullcontext()
    from sigma_ros.model.sigma import low_precision_scan_inputs

    return low_precision_scan_inputs(True)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Iterable,
               device: torch.device, *, accum_steps: int = 1, amp_dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None, grad_clip: float | None = None,
               ddp: bool = False, scan_bf16: bool = False, params=None) -> torch.Tensor:
    """Forward/backward over ``accum_steps`` micro-batches of (rgb, x, label), then one optimiser step.

    ``model`` may be DDP-wrapped (``ddp=True``): gradients are all-reduced only on the last micro-batch.
    Returns the mean micro-batch loss as a 0-d tensor on ``device`` (no host sync).
    """
    scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
    total = torch.zeros((), device=device)
    it = iter(micro_batches)
    for a in range(accum_steps):
        rgb, x, label = next(it)
        rgb = rgb.to(device, non_blocking=True)
        x = x.to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        sync = nullcontext() if (not ddp or a == accum_steps - 1) else model.no_sync()
        amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with sync:
            with amp, _scan_precision(scan_bf16 and amp_dtype is not None):
                logits = model(rgb, x)
            loss = segmentation_loss(logits, label)
            scaler.scale(loss / accum_steps).backward()
        total += loss.detach()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params if params is not None else model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total / accum_steps


# Blocks whose activations are recomputed in backward when activation checkpointing is on: every encoder, fusion and
# decoder block (outermost only; nesting would recompute twice).
CHECKPOINT_BLOCKS = ("VSSBlock", "CrossMambaFusionBlock", "ConcatMambaFusionBlock", "CVSSDecoderBlock")


def enable_activation_checkpointing(model: nn.Module, block_names=CHECKPOINT_BLOCKS) -> int:
    """Recompute each block's activations in backward instead of storing them (torch.utils.checkpoint,
    non-reentrant): much less training memory for about one extra forward. Weights and outputs are unchanged;
    stochastic depth draws the same masks in the recomputation (RNG state is preserved). Returns the block count."""
    from torch.utils.checkpoint import checkpoint

    from sigma_ros.model import sigma as sigma_module

    count = 0
    for m in model.modules():
        if type(m).__name__ not in block_names or getattr(m, "_sigma_checkpointed", False):
            continue
        orig = m.forward

        def forward(*args, _orig=orig):
            if not torch.is_grad_enabled():
                return _orig(*args)
            # The recomputation runs outside this call's context managers: carry the scan-precision switch over
            # (autocast state is carried by checkpoint itself).
            low = getattr(sigma_module, "_scan_low_precision_inputs", False)

            def run(*a):
                with _scan_precision(low):
                    return _orig(*a)

            return checkpoint(run, *args, use_reentrant=False)

        m.forward = forward
        m._sigma_checkpointed = True
        count += 1
    return count
