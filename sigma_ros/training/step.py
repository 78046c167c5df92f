"""One optimiser step of the training recipe, shared by the trainer and ``bench/bench_train.py`` (so the benchmark
times exactly what the trainer runs)."""
from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .augment import IGNORE_INDEX


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the non-ignored pixels (255 = ignore); 0 rather than NaN for an all-ignore batch."""
    valid = (label != IGNORE_INDEX).sum().clamp(min=1)
    return F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="sum") / valid


@contextmanager
def _scan_switches(low: bool, triton: bool):
    """The model's scan switches for a step: bf16 scan inputs (fp32 state inside the kernel; the model's default
    casts them to fp32) and the Triton scan with its backward instead of mamba-ssm's kernels on flipped copies."""
    from sigma_ros.model.sigma import low_precision_scan_inputs, triton_training_scans

    with low_precision_scan_inputs(low), triton_training_scans(triton):
        yield


def _with_scan_switches(switches: tuple[bool, bool], fn, *args):
    with _scan_switches(*switches):
        return fn(*args)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Iterable,
               device: torch.device, *, accum_steps: int = 1, amp_dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None, grad_clip: float | None = None,
               ddp: bool = False, scan_bf16: bool = False, triton_scans: bool = False,
               cuda_graphs: bool = False, params=None) -> torch.Tensor:
    """Forward/backward over ``accum_steps`` micro-batches of (rgb, x, label), then one optimiser step.
    ``scan_bf16`` and ``triton_scans`` set the model's scan switches (see ``_scan_switches``).

    ``model`` may be DDP-wrapped (``ddp=True``): gradients are all-reduced only on the last micro-batch.
    ``cuda_graphs``: ``model`` is compiled with CUDA graphs (``compile_for_training(..., cuda_graphs=True)``); each
    step is marked as a new one, so the graphs' memory from the previous step is free to be reused.
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
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with sync:
            with amp, _scan_switches(scan_bf16 and amp_dtype is not None, triton_scans):
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


def compile_for_training(net: nn.Module, device: torch.device, cuda_graphs: bool = False) -> nn.Module:
    """``net`` under torch.compile for training steps (DDP-wrapped or not; the caller keeps the plain module for
    evaluation and checkpoints, which share its parameters).

    The selective scans are custom ops with a registered backward (``ops.selective_scan``), so forward and
    backward each compile to one graph and Inductor fuses the copies, casts, norms and gates around the scans.
    The first step compiles (minutes on a first run; Inductor caches kernels on disk for later runs). Where
    compilation fails, dynamo runs that code eagerly instead of failing the run (``suppress_errors``). Not for a
    model with activation checkpointing: the trainer uses one or the other (see ``TrainConfig.compile``).
    ``cuda_graphs``: Inductor also records forward and backward as CUDA graphs and replays them ("reduce-overhead";
    see ``TrainConfig.cuda_graphs`` for when it applies, and ``train_step(..., cuda_graphs=True)``).

    The scan backend is resolved (mamba-ssm imported) here, before any tracing: an import that first happens
    inside the compiled forward would make dynamo trace mamba-ssm's dependencies' module code too."""
    import torch._dynamo

    from sigma_ros.ops.selective_scan import resolve_backend

    resolve_backend(device)
    torch._dynamo.config.suppress_errors = True
    return torch.compile(net, mode="reduce-overhead" if cuda_graphs else None)


# Blocks whose activations are recomputed in backward when activation checkpointing is on: every encoder, fusion and
# decoder block (outermost only; nesting would recompute twice).
CHECKPOINT_BLOCKS = ("VSSBlock", "CrossMambaFusionBlock", "ConcatMambaFusionBlock", "CVSSDecoderBlock")
CHECKPOINT_CHOICES = ("all", "high-res")


def block_stage(name: str) -> int | None:
    """The encoder stage whose resolution a Sigma block (by its module name) works at: encoder layer i and fusion
    blocks i at stage i; the decoder's ``layers_up.j`` at stage 3 - j. None for other modules."""
    parts = name.split(".")
    for key, to_stage in (("layers", int), ("cross_mamba", int), ("channel_attn_mamba", int),
                          ("layers_up", lambda j: 3 - int(j))):
        if key in parts[:-1]:
            return to_stage(parts[parts.index(key) + 1])
    return None


def enable_activation_checkpointing(model: nn.Module, which: str = "all", block_names=CHECKPOINT_BLOCKS) -> int:
    """Recompute block activations in backward instead of storing them (torch.utils.checkpoint, non-reentrant).

    ``which``: "all" blocks (far less training memory for about one extra forward), or "high-res": only the blocks
    at the first stage's resolution (a quarter of the input's), which hold the largest activations for the least
    recomputation. A block recomputes the methods its class names in ``checkpointed_parts`` (its residual branches;
    the whole forward if it names none): the stochastic-depth masks are drawn outside them, so nothing random is
    recomputed and no RNG state is stashed. Weights, outputs and gradients are unchanged. Returns the block count."""
    from torch.utils.checkpoint import checkpoint

    from sigma_ros.model import sigma as sigma_module

    if which not in CHECKPOINT_CHOICES:
        raise ValueError(f"activation checkpointing must be one of {CHECKPOINT_CHOICES}, got {which!r}")

    def recomputed(fn):
        def part(*args):
            if not torch.is_grad_enabled():
                return fn(*args)
            run = fn
            if not torch.compiler.is_compiling():
                # Eagerly, the recomputation runs outside this call's context managers: carry the scan switches
                # over (autocast state is carried by checkpoint itself). Traced, it replays the traced ops, switches
                # included; and a context manager that flips a module switch inside the checkpoint would make dynamo
                # break the graph at every block and compile each one apart.
                switches = sigma_module._scan_low_precision_inputs, sigma_module._training_scans
                run = functools.partial(_with_scan_switches, switches, fn)
            return checkpoint(run, *args, use_reentrant=False, preserve_rng_state=False)

        return part

    count = 0
    for name, m in model.named_modules():
        if type(m).__name__ not in block_names or getattr(m, "_sigma_checkpointed", False):
            continue
        if which == "high-res" and block_stage(name) != 0:
            continue
        for part in getattr(m, "checkpointed_parts", ("forward",)):
            setattr(m, part, recomputed(getattr(m, part)))
        m._sigma_checkpointed = True
        count += 1
    return count
