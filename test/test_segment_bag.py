"""``sigma-ros segment-bag`` on real rosbag2 bags written by rosbags (sqlite3 and MCAP), read back with rosbags."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

RGB = "/camera/color/image_raw"
X = "/camera/thermal/image_raw"
OUT = "/sigma_segmentation"
H, W = 48, 64


def _read(path: Path):
    """topic -> list of (log time, msgtype, message) of a bag or bare .mcap file, via rosbags."""
    from rosbags.highlevel import AnyReader

    out: dict[str, list] = {}
    with AnyReader([path]) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, conn.msgtype, reader.deserialize(raw, conn.msgtype)))
    return out


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _segment(*argv) -> int:
    from sigma_ros.cli import main

    return main(["segment-bag", *map(str, argv)])


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def bag(request, tmp_path_factory):
    from sigma_ros.data.bags import write_synthetic_bag

    return write_synthetic_bag(tmp_path_factory.mktemp("bag") / f"in_{request.param}", n_frames=5, fps=10.0,
                               storage=request.param, height=H, width=W, seed=1)


def test_output_bag_topics_sizes_encodings_stamps(bag, micro_checkpoint, tmp_path):
    from sigma_ros.image_codec import image_to_numpy
    from sigma_ros.segmenter import Segmenter

    out = tmp_path / "seg.mcap"
    assert _segment(bag["path"], "--out", out, "--checkpoint", micro_checkpoint, "--rgb-topic", RGB,
                    "--x-topic", X, "--device", "cpu", "--confidence") == 0
    assert out.is_file()
    msgs = _read(out)
    assert set(msgs) == {RGB, X, f"{OUT}/label", f"{OUT}/color", f"{OUT}/overlay", f"{OUT}/confidence"}
    assert len(msgs[RGB]) == 5 and len(msgs[X]) == len(bag["x_stamps"])  # inputs copied unchanged
    rgb_stamps = sorted(bag["rgb_stamps"])
    for topic, enc in (("label", "mono8"), ("color", "rgb8"), ("overlay", "rgb8"), ("confidence", "32FC1")):
        items = msgs[f"{OUT}/{topic}"]
        assert len(items) == 5, topic
        for t, msgtype, m in items:
            assert msgtype == "sensor_msgs/msg/Image"
            assert (m.height, m.width, m.encoding) == (H, W, enc)
            assert m.header.frame_id == "camera_color_optical_frame"  # the RGB image's header
        assert [_stamp(m) for _, _, m in items] == rgb_stamps
    # every output is logged no earlier than the RGB message it came from
    rgb_log = {_stamp(m): t for t, _, m in msgs[RGB]}
    assert all(t >= rgb_log[_stamp(m)] for t, _, m in msgs[f"{OUT}/label"])

    # the label image is what the Segmenter computes for that pair
    seg = Segmenter.from_checkpoint(micro_checkpoint, device="cpu")
    first_rgb = image_to_numpy(msgs[RGB][0][2])
    first_x = next(image_to_numpy(m) for _, _, m in msgs[X]
                   if abs(_stamp(m) - _stamp(msgs[RGB][0][2])) <= 50_000_000)
    label_msg = next(m for _, _, m in msgs[f"{OUT}/label"] if _stamp(m) == _stamp(msgs[RGB][0][2]))
    np.testing.assert_array_equal(image_to_numpy(label_msg), seg(first_rgb, first_x).labels.astype(np.uint8))
    conf = image_to_numpy(msgs[f"{OUT}/confidence"][0][2])
    assert conf.dtype == np.float32 and 0 < conf.min() and conf.max() <= 1


def test_folder_output_pngs_gif_and_max_frames(bag, micro_checkpoint, tmp_path):
    from PIL import Image
    from rosbags.rosbag2 import Reader

    out = tmp_path / "segbag"
    gif = tmp_path / "overlay.gif"
    assert _segment(bag["path"], "--out", out, "--checkpoint", micro_checkpoint, "--rgb-topic", RGB,
                    "--x-topic", X, "--device", "cpu", "--png-dir", tmp_path / "png", "--video", gif,
                    "--max-frames", 3, "--prefix", "/seg") == 0
    assert (out / "metadata.yaml").is_file()
    with Reader(out) as reader:  # a rosbag2 folder: what `ros2 bag play` expects
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/seg/label"] == counts["/seg/color"] == counts["/seg/overlay"] == 3
    assert counts[RGB] == 5  # inputs are still copied in full
    for sub in ("label", "color", "overlay"):
        files = sorted((tmp_path / "png" / sub).glob("*.png"))
        assert len(files) == 3
        with Image.open(files[0]) as im:
            assert im.size == (W, H) and im.mode == ("L" if sub == "label" else "RGB")
    with Image.open(gif) as im:
        assert im.n_frames == 3 and im.size == (W, H)


def test_compressed_rgb_input(micro_checkpoint, tmp_path):
    from sigma_ros.data.bags import write_synthetic_bag

    b = write_synthetic_bag(tmp_path / "jpeg", n_frames=3, storage="mcap", height=H, width=W, rgb_format="jpeg",
                            thermal_encoding="mono8")
    out = tmp_path / "o.mcap"
    assert _segment(b["path"], "--out", out, "--checkpoint", micro_checkpoint, "--rgb-topic", RGB, "--x-topic", X,
                    "--device", "cpu", "--no-inputs") == 0
    msgs = _read(out)
    assert set(msgs) == {f"{OUT}/label", f"{OUT}/color", f"{OUT}/overlay"}
    assert [(m.height, m.width) for _, _, m in msgs[f"{OUT}/overlay"]] == [(H, W)] * 3


def test_errors_are_clear(bag, micro_checkpoint, tmp_path, capsys):
    common = ["--checkpoint", micro_checkpoint, "--device", "cpu"]
    assert _segment(bag["path"], "--out", tmp_path / "a.mcap", "--rgb-topic", "/nope", "--x-topic", X, *common) == 2
    err = capsys.readouterr().err
    assert "/nope" in err and RGB in err  # names the missing topic and lists what the bag has
    assert _segment(bag["path"], "--out", tmp_path / "b.mcap", "--rgb-topic", "/rosout_text", "--x-topic", X,
                    *common) == 2
    assert "not an image" in capsys.readouterr().err
    assert _segment(tmp_path / "missing_bag", "--out", tmp_path / "c.mcap", "--rgb-topic", RGB, "--x-topic", X,
                    *common) == 2
    assert "missing_bag" in capsys.readouterr().err
    (tmp_path / "exists.mcap").write_bytes(b"x")
    assert _segment(bag["path"], "--out", tmp_path / "exists.mcap", "--rgb-topic", RGB, "--x-topic", X,
                    *common) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _segment(bag["path"], "--out", tmp_path / "d.mcap", "--rgb-topic", RGB, "--x-topic", X,
                    "--video", tmp_path / "v.avi", *common) == 2
    assert ".gif or .mp4" in capsys.readouterr().err
    assert not (tmp_path / "a.mcap").exists() and not (tmp_path / "d.mcap").exists()


def test_mp4_needs_imageio_ffmpeg_or_is_written(bag, micro_checkpoint, tmp_path, capsys):
    import importlib.util

    rc = _segment(bag["path"], "--out", tmp_path / "m.mcap", "--checkpoint", micro_checkpoint, "--rgb-topic", RGB,
                  "--x-topic", X, "--device", "cpu", "--video", tmp_path / "v.mp4")
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        assert rc == 2 and "imageio-ffmpeg" in capsys.readouterr().err
    else:
        assert rc == 0 and (tmp_path / "v.mp4").stat().st_size > 0
