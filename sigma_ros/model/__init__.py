"""The Sigma model: configuration, network, checkpoints. One code path for the node, the tools and the trainer."""
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_vmamba_imagenet,
    save_checkpoint,
)
from .config import VARIANTS, SigmaConfig
from .sigma import Sigma, build_sigma

__all__ = [
    "Checkpoint", "CheckpointError", "Sigma", "SigmaConfig", "VARIANTS", "build_sigma", "load_checkpoint",
    "load_vmamba_imagenet", "save_checkpoint",
]
