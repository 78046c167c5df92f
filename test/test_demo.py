"""``sigma-ros demo``: the live short mode (the real node and the demo's camera in separate processes over DDS) and
real-frame mode (PNG pairs written here, and the real samples in ../shared/data when present).

The live run uses the bundled demo checkpoint when models/ has it, else a Sigma-micro checkpoint made here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sigma_ros import cli
from sigma_ros.data.synthetic import CAR, CONE, PERSON, SYNTHETIC_CLASS_NAMES, SYNTHETIC_PALETTE, make_scene
from sigma_ros.postprocess import colorize, overlay
from sigma_ros.tools import demo

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
BUNDLED = ROOT / "models" / demo.CHECKPOINT_NAME
OBJECTS = (CAR, PERSON, CONE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    if BUNDLED.is_file():
        return BUNDLED
    import torch

    from sigma_ros.model import SigmaConfig, build_sigma, save_checkpoint

    torch.manual_seed(0)
    cfg = SigmaConfig.micro(num_classes=len(SYNTHETIC_CLASS_NAMES))
    path = tmp_path_factory.mktemp("demo_ckpt") / "micro_synthetic.pt"
    save_checkpoint(path, build_sigma(cfg), cfg, class_names=SYNTHETIC_CLASS_NAMES, palette=SYNTHETIC_PALETTE,
                    preprocessing="rgb")
    return path


def run_demo(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    """``sigma-ros demo ARGS`` in this process (real-frame mode needs no ROS): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["sigma-ros"])  # cli.main rewrites sys.argv; restored afterwards
    rc = cli.main(["demo", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def histogram_from_stdout(out: str) -> dict[int, int]:
    """{class id: pixels} from the printed class histogram."""
    rows = re.findall(r"^\s+(\d+)\s+.+?\s+(\d+)\s+[\d.]+%$", out, flags=re.M)
    return {int(k): int(n) for k, n in rows}


# ------------------------------------------------------------------------------------------------------------------
def test_live_short_demo(tmp_path, checkpoint):
    pytest.importorskip("rclpy")
    out = tmp_path / "demo_out"
    domain = 120 + os.getpid() % 100  # apart from test_ros_node's domains (1..100)
    proc = subprocess.run(
        [sys.executable, "-m", "sigma_ros.cli", "demo", "--short", "--checkpoint", str(checkpoint),
         "--out", str(out), "--domain-id", str(domain)],
        capture_output=True, text=True, timeout=240, cwd=str(tmp_path), env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log = proc.stdout + proc.stderr + ((out / "node.log").read_text() if (out / "node.log").exists() else "")
    assert proc.returncode == 0, log
    # the diagnostics table, from the node's /diagnostics, and a clean SIGINT shutdown
    assert "diagnostics summary" in proc.stdout, log
    for row in ("inference p50 / p95", "end-to-end p50 / p95", "pairs / dropped", "input rate rgb / thermal"):
        assert row in proc.stdout, log
    assert re.search(r"inference p50 / p95\s+\d+\.\d / \d+\.\d ms", proc.stdout), log
    assert "node exit (SIGINT)                clean (0)" in proc.stdout, log
    node_log = (out / "node.log").read_text()
    assert "ready:" in node_log and "shutting down" in node_log, node_log

    summary = json.loads((out / "summary.json").read_text())
    m = summary["measured"]
    n = m["frames"]
    assert n >= demo.SHORT["frames"] or m["stream_seconds"] >= demo.SHORT["duration"], summary
    assert n >= 3, summary
    assert m["node_exit_code"] == 0
    diag = summary["diagnostics"]
    assert diag is not None and int(diag["outputs_published"]) >= 1 and int(diag["decode_errors"]) == 0, diag
    assert diag["device"].startswith("cpu")

    w, h = (int(v) for v in demo.SHORT["size"].split("x"))
    palette = np.array(summary["palette"], np.uint8)
    strips = sorted((out / "strips").glob("strip_*.png"))
    overlays = sorted((out / "overlays").glob("overlay_*.png"))
    labels = sorted((out / "labels").glob("label_*.png"))
    assert len(strips) == len(overlays) == len(labels) == n

    # every RGB panel is one of the camera's frames, unchanged by the trip through DDS and the node
    camera = demo.SyntheticCamera((w, h), 2.0, 10.0, seed=0)
    sent = {camera.frame(i)[0].tobytes() for i in range(len(camera.scenes) * camera.frames_per_scene)}
    top = demo.CAPTION_H
    object_pixels = 0
    for s_path, o_path, l_path in zip(strips, overlays, labels):
        strip, over, label = read(s_path), read(o_path), read(l_path)
        assert strip.shape == (demo.CAPTION_H + h + demo.LEGEND_H, 3 * w, 3)
        assert over.shape == (h, w, 3) and label.shape == (h, w) and label.dtype == np.uint8
        assert label.max() < len(palette)
        rgb = strip[top: top + h, :w]
        assert rgb.tobytes() in sent
        assert np.array_equal(strip[top: top + h, 2 * w:], over)
        assert strip[top: top + h, w: 2 * w].std() > 5  # the thermal panel shows a picture
        # the node's overlay is the label colours blended over this very RGB frame ...
        assert np.abs(over.astype(int) - overlay(rgb, label, palette, 0.5).astype(int)).max() <= 1
        # ... so it differs from the input where objects were segmented
        obj = np.isin(label, OBJECTS)
        object_pixels += int(obj.sum())
        if obj.any():
            diff = np.abs(over.astype(int) - rgb.astype(int)).sum(axis=2)
            assert (diff[obj] > 0).mean() > 0.9
    assert object_pixels > 0, "no car/person/cone segmented in any frame"

    with Image.open(out / "demo.gif") as gif:
        assert gif.n_frames == m["gif_frames"] == min(n, 100)
        assert gif.size == (3 * w, demo.CAPTION_H + h + demo.LEGEND_H)  # narrower than --gif-width: not scaled


# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_pair(tmp_path_factory):
    """A night scene as separate RGB / 8-bit / 16-bit thermal PNGs and as an MFNet-style 4-channel PNG."""
    d = tmp_path_factory.mktemp("pair")
    s = make_scene(11, 96, 128, night=True)
    Image.fromarray(s["rgb"]).save(d / "rgb.png")
    Image.fromarray(s["x"]).save(d / "thermal8.png")
    Image.fromarray((s["x"].astype(np.uint16) * 257).astype("<u2")).save(d / "thermal16.png")
    Image.fromarray(np.dstack([s["rgb"], s["x"]]), "RGBA").save(d / "mfnet_style.png")
    assert Image.open(d / "thermal16.png").mode.startswith("I;16")
    return d, s


def test_real_frame_outputs(tmp_path, monkeypatch, capsys, checkpoint, synthetic_pair):
    d, scene = synthetic_pair
    out = tmp_path / "out"
    rc, stdout, err = run_demo(monkeypatch, capsys, "--rgb", d / "rgb.png", "--x", d / "thermal16.png",
                               "--checkpoint", checkpoint, "--out", out)
    assert rc == 0, err
    label, color, over, strip = (read(out / f"{n}.png") for n in ("label", "color", "overlay", "strip"))
    from sigma_ros.model import load_checkpoint

    palette = load_checkpoint(checkpoint).palette
    assert label.shape == (96, 128) and label.dtype == np.uint8 and label.max() < len(palette)
    assert np.array_equal(color, colorize(label, palette))
    assert np.array_equal(over, overlay(scene["rgb"], label, palette, 0.5))
    assert strip.shape == (demo.CAPTION_H + 96 + demo.LEGEND_H, 3 * 128, 3)
    assert np.array_equal(strip[demo.CAPTION_H: demo.CAPTION_H + 96, :128], scene["rgb"])
    # the printed histogram is the label image's
    counts = np.bincount(label.ravel(), minlength=len(palette))
    assert histogram_from_stdout(stdout) == {k: int(c) for k, c in enumerate(counts) if c}
    assert "thermal" in stdout and "uint16" in stdout

    # the same pair as 8-bit thermal and as one MFNet 4-channel PNG gives the same labels
    for args in (("--x", d / "thermal8.png"), ()):
        rgb = d / ("rgb.png" if args else "mfnet_style.png")
        o = tmp_path / f"out_{len(args)}"
        rc, stdout, err = run_demo(monkeypatch, capsys, "--rgb", rgb, *args, "--checkpoint", checkpoint, "--out", o)
        assert rc == 0, err
        assert np.array_equal(read(o / "label.png"), label)
    assert "thermal from the alpha channel" in stdout


def test_real_frame_errors(tmp_path, monkeypatch, capsys, checkpoint, synthetic_pair):
    d, _ = synthetic_pair
    rc, _, err = run_demo(monkeypatch, capsys, "--rgb", d / "rgb.png", "--checkpoint", checkpoint)
    assert rc == 2 and "not a 4-channel" in err and "--x" in err
    rc, _, err = run_demo(monkeypatch, capsys, "--rgb", d / "rgb.png", "--x", tmp_path / "missing.png",
                          "--checkpoint", checkpoint)
    assert rc == 2 and "missing.png" in err
    rc, _, err = run_demo(monkeypatch, capsys, "--rgb", d / "rgb.png", "--x", d / "thermal8.png",
                          "--checkpoint", tmp_path / "nope.pt")
    assert rc == 2 and "checkpoint not found" in err and "nope.pt" in err
    rc, _, err = run_demo(monkeypatch, capsys, "--rgb", d / "rgb.png", "--x", d / "thermal8.png",
                          "--checkpoint", checkpoint, "--config", "nyu")  # 40 classes vs the model's 8
    assert rc == 2 and "cannot load" in err and "classes" in err


def test_default_checkpoint_resolution(tmp_path, monkeypatch):
    candidates = demo.default_checkpoint_candidates()
    assert candidates[0] == BUNDLED  # the checkout first, then the installed share dirs
    assert Path(sys.prefix) / "share" / "sigma_ros" / "models" / demo.CHECKPOINT_NAME in candidates
    if BUNDLED.is_file():
        assert demo.resolve_checkpoint(None) == BUNDLED
    monkeypatch.setattr(demo, "default_checkpoint_candidates", lambda: [tmp_path / "a" / demo.CHECKPOINT_NAME])
    with pytest.raises(demo.DemoError, match=f"{demo.CHECKPOINT_NAME} is missing.*{tmp_path}"):
        demo.resolve_checkpoint(None)


# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sample, xname, modality, size", [
    ("mfnet_sample/01234N.png", None, "thermal", (640, 480)),  # 4-channel: thermal in alpha
    ("rgbd_sample/rgb.png", "rgbd_sample/depth.png", "depth", (512, 424)),  # 16-bit depth (mm, 0 = invalid)
    ("pst900_sample/rgb.png", "pst900_sample/thermal.png", "thermal", (1280, 720)),
])
def test_real_frame_shared_samples(tmp_path, monkeypatch, capsys, checkpoint, sample, xname, modality, size):
    rgb_path = SHARED_DATA / sample
    if not rgb_path.is_file():
        pytest.skip(f"{rgb_path} is not present (../shared/data)")
    args = ["--rgb", rgb_path] + (["--x", SHARED_DATA / xname] if xname else [])
    # inference at 160x120 keeps this quick on CPU; outputs come back at the image size
    rc, stdout, err = run_demo(monkeypatch, capsys, *args, "--checkpoint", checkpoint, "--out", tmp_path,
                               "--input-size", "160x120")
    assert rc == 0, err
    w, h = size
    label = read(tmp_path / "label.png")
    assert label.shape == (h, w)
    assert read(tmp_path / "overlay.png").shape == (h, w, 3)
    assert read(tmp_path / "strip.png").shape == (demo.CAPTION_H + h + demo.LEGEND_H, 3 * w, 3)
    assert f"({modality}," in stdout
    assert sum(histogram_from_stdout(stdout).values()) == w * h
    if modality == "depth":  # invalid depth (0) is drawn black in the depth panel
        from sigma_ros.data.datasets import read_image

        depth = read_image(SHARED_DATA / xname, "x")
        panel = read(tmp_path / "strip.png")[demo.CAPTION_H: demo.CAPTION_H + h, w: 2 * w]
        assert (panel[depth == 0] == 0).all() and panel[depth > 0].max() > 0
