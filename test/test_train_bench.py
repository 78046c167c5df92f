"""The bench scripts run (tiny, on the CPU) and report what the GPU run will report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_train.py"


def test_bench_train_cpu_smoke(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(BENCH), "--cpu-smoke", "--json", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "img/s" in p.stdout and "loader" in p.stdout
    (r,) = json.loads(out.read_text())
    assert r["mode"] == "fp32" and r["variant"] == "micro" and r["batch_global"] == 2
    assert r["images_per_s"] > 0 and r["step_ms_median"] > 0 and r["loss_last"] > 0
    assert r["optimised_params"] > 1_000_000


def test_bench_train_rejects_unknown_mode():
    p = subprocess.run([sys.executable, str(BENCH), "--cpu-smoke", "--modes", "turbo"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "turbo" in p.stderr


def test_check_compiled_gradients_cpu_smoke():
    """bench/check_compiled_gradients.py on the micro model: every gradient finite, and the compiled step's gradients
    are the same with and without high-res checkpointing (both measured against eager), and so are two further
    optimizer steps of each (--train-steps)."""
    script = BENCH.parent / "check_compiled_gradients.py"
    p = subprocess.run([sys.executable, str(script), "--cpu-smoke", "--train-steps", "2"], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    steps = [line for line in p.stdout.splitlines() if " gradients, " in line]
    assert len(steps) == 6 and all(" 0 non-finite" in line for line in steps), p.stdout
    medians = [float(line.split("median relative difference ")[1].split(";")[0])
               for line in p.stdout.splitlines() if "against eager" in line]
    assert len(medians) == 2 and medians[0] == medians[1] < 0.05, p.stdout
    trained = [line.split(": ", 1)[1] for line in p.stdout.splitlines() if " step " in line]
    assert len(trained) == 4 and trained[:2] == trained[2:], p.stdout
    assert all(line.endswith("non-finite gradients 0, parameters 0") for line in trained), p.stdout


def test_compiled_activation_memory_cpu_run():
    """bench/compiled_activation_memory.py traces the micro model's compiled training forward without running it and
    lists what it keeps for the backward; without Triton's interpreter it refuses, naming the variable."""
    import os

    script = BENCH.parent / "compiled_activation_memory.py"
    args = [sys.executable, str(script), "--variant", "micro", "--size", "32x48", "--batch", "1", "--top", "3"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    storages = int(p.stdout.split("keeps ")[1].split(" storages")[0])
    assert storages > 100 and p.stdout.count(" MiB  (") == 3, p.stdout
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2 and "TRITON_INTERPRET=1" in p.stderr


def test_gpu_idle_is_the_time_no_kernel_covers():
    """bench_train's idle figure: gaps between GPU kernels, overlaps counted once, host events ignored."""
    import importlib.util
    from types import SimpleNamespace

    import torch

    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def ev(start, end, dev=cuda):
        return SimpleNamespace(time_range=SimpleNamespace(start=start, end=end), device_type=dev)

    spans = [ev(0, 100), ev(10, 20), ev(50, 150), ev(400, 500), ev(160, 900, cpu), ev(450, 700)]
    prof = SimpleNamespace(events=lambda: spans)
    assert bench.gpu_idle_ms(prof) == 0.25  # 150 -> 400 us
    assert bench.gpu_idle_ms(SimpleNamespace(events=lambda: [])) == 0.0


def test_bench_ab_times_every_baseline_against_this_checkout(tmp_path):
    """bench/bench_ab.py (GPU only) names its packages: baseline folders by their folder (the whole path where two
    share a name), revisions extracted from git, this checkout last."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ab", BENCH.parent / "bench_ab.py")
    bench_ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_ab)
    first, second = tmp_path / "a" / "old", tmp_path / "b" / "old"
    roots = bench_ab.packages([], [str(first), str(second)], str(tmp_path))
    assert roots == {"old": str(first), str(second): str(second), "this": str(bench_ab.ROOT)}
    if subprocess.run(["git", "-C", str(bench_ab.ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    roots = bench_ab.packages([], [], str(tmp_path))
    assert list(roots) == ["HEAD", "this"]
    assert (Path(roots["HEAD"]) / "sigma_ros" / "ops" / "triton_scan.py").is_file()
