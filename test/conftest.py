"""Shared fixtures. ../shared (reference files and real sample frames) sits beside the repository; tests that need
it skip cleanly when it is absent."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Without a GPU, Triton kernels can only run under Triton's CPU interpreter, which is chosen when triton is first
# imported: set it before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def triton_ops():
    """``triton_ops("triton_scan")`` -> the module ``sigma_ros.ops.triton_scan`` for a kernel test: its kernels are
    compiled for the GPU where there is one, else run by Triton's CPU interpreter; the test skips without triton
    or when the interpreter is off on a machine without a GPU."""
    def load(name: str):
        pytest.importorskip("triton")
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("no GPU, and Triton's CPU interpreter is off")
        return importlib.import_module(f"sigma_ros.ops.{name}")
    return load


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def micro_cfg():
    from sigma_ros.model import SigmaConfig

    return SigmaConfig.micro(num_classes=5)


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory, micro_cfg) -> Path:
    """A saved micro model (random weights) with class names, palette and the rgb profile."""
    from sigma_ros.model import build_sigma, save_checkpoint
    from sigma_ros.postprocess import voc_palette

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "micro.pt"
    names = [f"c{i}" for i in range(micro_cfg.num_classes)]
    save_checkpoint(path, build_sigma(micro_cfg), micro_cfg, class_names=names,
                    palette=voc_palette(micro_cfg.num_classes), preprocessing="rgb")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
