"""Multi-process training under torchrun (PyTorch DDP, gloo backend on CPU): two processes share the batch, only
rank 0 writes, and a DDP run resumes from its own state."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

H, W = 48, 64


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from sigma_ros.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_train=8, n_test=2, height=H, width=W, seed=4)


def _torchrun(*args, timeout=420):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sigma_ros.cli", "train", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_ddp_run_and_resume(syn, tmp_path):
    from sigma_ros.model import load_checkpoint

    run = tmp_path / "ddp"
    common = ["--data", syn, "--out", run, "--variant", "micro", "--batch-size", 4, "--crop", f"{H}x{W}",
              "--eval-every", 2, "--no-progress", "--device", "cpu", "--threads", 1]
    p = _torchrun(*common, "--max-steps", 2)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert "x2 (DDP)" in out
    assert out.count("trained 2 steps") == 1  # only rank 0 reports and writes
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2] and rows[0]["mIoU"]
    state = torch.load(run / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # every rank's RNG state is kept for resuming
    assert state["micro"] == 2 and state["config"]["batch_size"] == 4

    p = _torchrun(*common, "--max-steps", 4, "--resume")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resumed" in p.stdout + p.stderr
    assert [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv"))] == [2, 4]
    assert load_checkpoint(run / "last.pt").extra["step"] == 4
    assert not list(run.glob("*.tmp"))
