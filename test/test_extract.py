"""sigma-ros extract on real rosbag2 bags written with rosbags (sqlite3 and mcap), checked file by file."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sigma_ros.cli import main as cli_main
from sigma_ros.data import extract as extract_mod
from sigma_ros.data.bags import thermal_to_mono16, write_synthetic_bag
from sigma_ros.data.datasets import open_dataset
from sigma_ros.data.extract import ExtractConfig, depth_to_mm, extract
from sigma_ros.data.synthetic import make_scene

RGB_T, X_T, LAB_T = "/camera/color/image_raw", "/camera/thermal/image_raw", "/camera/labels"
H, W = 48, 64


def cfg(**kw):
    base = dict(rgb_topic=RGB_T, x_topic=X_T, progress=False)
    base.update(kw)
    return ExtractConfig(**base)


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """RGB 30 Hz (rgb8) + thermal 10 Hz (mono16) + labels (mono8, every 3rd RGB frame), 1 s, jittered stamps,
    thermal logged 30 ms after its stamp, in both storage formats."""
    root = tmp_path_factory.mktemp("bags")
    out = {}
    for k, storage in enumerate(("mcap", "sqlite3")):
        out[storage] = write_synthetic_bag(root / f"run_{storage}", n_frames=30, fps=30, x_fps=10, storage=storage,
                                           height=H, width=W, seed=11 + k, label_topic=LAB_T, label_every=3,
                                           rgb_topic=RGB_T, x_topic=X_T, jitter=0.002)
    return out


def scene_of(info, k):
    return make_scene(info["scene_seeds"][k], info["height"], info["width"], night=info["nights"][k])


def png(path):
    return np.asarray(Image.open(path))


def check_frames(out: Path, info: dict, with_labels: bool):
    manifest = json.loads((out / "manifest.json").read_text())
    frames = {f["name"]: f for f in manifest["frames"]}
    rgb_stamps = np.array(info["rgb_stamps"])
    assert len(frames) == len(info["x_stamps"])  # every thermal frame found its RGB (and label) partner
    for j, x_stamp in enumerate(info["x_stamps"]):
        k = int(np.argmin(np.abs(rgb_stamps - x_stamp)))  # the nearest RGB frame is the right partner
        name = f"{Path(info['path']).name}_{info['rgb_stamps'][k]:019d}"
        f = frames[name]
        assert f["x_stamp_ns"] == x_stamp and f["rgb_stamp_ns"] == info["rgb_stamps"][k]
        assert f["sync_offset_ns"] == x_stamp - info["rgb_stamps"][k]
        scene = scene_of(info, k)
        np.testing.assert_array_equal(png(out / "RGB" / f"{name}.png"), scene["rgb"])
        modal = png(out / "Modal" / f"{name}.png")
        assert modal.dtype == np.uint16 and modal.max() > 255  # 16-bit thermal kept as 16-bit
        np.testing.assert_array_equal(modal, thermal_to_mono16(scene_of(info, info["x_scene"][j])["x"]))
        if with_labels:
            assert f["label_stamp_ns"] == info["rgb_stamps"][k]
            np.testing.assert_array_equal(png(out / "Label" / f"{name}.png"), scene["label"])
    return manifest


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_extract_pairs_files_and_manifest(bags, tmp_path, storage):
    info = bags[storage]
    out = tmp_path / "ds"
    summary = extract([info["path"]], out, cfg(label_topic=LAB_T, test_fraction=0.3, seed=3))
    assert not summary.failed and summary.pairs == 10 and summary.written == 10
    assert summary.bags[0].storage == storage
    manifest = check_frames(out, info, with_labels=True)
    assert manifest["topics"] == {"rgb": RGB_T, "x": X_T, "label": LAB_T}
    assert manifest["modality"] == "thermal" and manifest["counts"]["frames"] == 10
    bag = manifest["bags"][Path(info["path"]).name]
    assert bag["messages"] == {RGB_T: 30, X_T: 10, LAB_T: 10} and bag["status"] == "ok"
    assert bag["dropped"][RGB_T] == 20  # 30 Hz RGB against 10 Hz thermal: two of three RGB frames are unmatched
    assert summary.offsets_ms()[1] < 15
    train = (out / "train.txt").read_text().split()
    test = (out / "test.txt").read_text().split()
    assert sorted(train + test) == sorted(f["name"] for f in manifest["frames"]) and test
    assert not set(train) & set(test)
    # the folder is a dataset our readers open
    ds = open_dataset(out, "train")
    assert ds.layout == "sigma" and ds.modality == "thermal" and len(ds) == len(train)
    item = ds[0]
    assert item["x"].dtype == np.uint16 and item["label"].shape == (H, W)


def test_without_labels_only_rgb_and_modal(bags, tmp_path):
    info = bags["mcap"]
    out = tmp_path / "ds"
    summary = extract([info["path"]], out, cfg())
    assert summary.written == 10 and not (out / "Label").exists()
    check_frames(out, info, with_labels=False)


def test_idempotent_rerun(bags, tmp_path):
    out = tmp_path / "ds"
    paths = [bags["mcap"]["path"], bags["sqlite3"]["path"]]
    first = extract(paths, out, cfg(label_topic=LAB_T))
    assert first.written == 20
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    lists = ((out / "train.txt").read_text(), (out / "test.txt").read_text())
    frames = json.loads((out / "manifest.json").read_text())["frames"]
    second = extract(paths, out, cfg(label_topic=LAB_T))
    assert second.written == 0 and second.skipped == 20 and second.pairs == 20
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes
    assert ((out / "train.txt").read_text(), (out / "test.txt").read_text()) == lists
    assert json.loads((out / "manifest.json").read_text())["frames"] == frames


def test_resume_after_an_interrupted_run(bags, tmp_path, monkeypatch):
    info = bags["sqlite3"]
    out = tmp_path / "ds"
    real = extract_mod.write_png
    calls = {"n": 0}

    def dying_write_png(path, arr, **kw):
        calls["n"] += 1
        if calls["n"] == 11:  # in the middle of the 4th frame (3 PNGs per frame)
            raise KeyboardInterrupt
        return real(path, arr, **kw)

    monkeypatch.setattr(extract_mod, "write_png", dying_write_png)
    with pytest.raises(KeyboardInterrupt):
        extract([info["path"]], out, cfg(label_topic=LAB_T))
    # The interrupted run left lists and a manifest that describe the complete frames (at least the 3 before the
    # failing one; writer threads may have finished later ones), the failing frame is incomplete, no temp files.
    manifest = json.loads((out / "manifest.json").read_text())
    listed = sorted((out / "train.txt").read_text().split() + (out / "test.txt").read_text().split())
    complete = sorted(p.stem for p in (out / "RGB").glob("*.png")
                      if (out / "Modal" / p.name).is_file() and (out / "Label" / p.name).is_file())
    assert listed == sorted(f["name"] for f in manifest["frames"])
    assert 3 <= len(listed) < 10 and set(listed) <= set(complete) and len(complete) < 10
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(extract_mod, "write_png", real)
    resumed = extract([info["path"]], out, cfg(label_topic=LAB_T))
    assert resumed.skipped == len(complete) and resumed.written == 10 - len(complete)
    check_frames(out, info, with_labels=True)


def test_every_and_min_interval(bags, tmp_path):
    info = bags["mcap"]
    s = extract([info["path"]], tmp_path / "every", cfg(every=3))
    assert s.pairs == 10 and s.written == 4 and s.subsampled == 6  # pairs 0, 3, 6, 9
    s = extract([info["path"]], tmp_path / "interval", cfg(min_interval=0.25))
    stamps = sorted(f["rgb_stamp_ns"] for f in json.loads((tmp_path / "interval" / "manifest.json").read_text())
                    ["frames"])
    assert s.written == len(stamps) == 4 and min(np.diff(stamps)) >= 0.25e9


def test_split_is_seeded_and_stable(bags, tmp_path):
    path = bags["mcap"]["path"]

    def split(out, seed):
        extract([path], out, cfg(test_fraction=0.5, seed=seed))
        return (out / "test.txt").read_text().split()

    a, b, c = split(tmp_path / "a", 1), split(tmp_path / "b", 1), split(tmp_path / "c", 2)
    assert a == b and a != c
    assert 1 <= len(a) <= 9
    # --split-block: whole time blocks go to one side (1 s of frames in 0.25 s blocks -> 4 or 5 blocks)
    out = tmp_path / "blocks"
    extract([path], out, cfg(test_fraction=0.5, seed=1, split_block=0.25))
    frames = json.loads((out / "manifest.json").read_text())["frames"]
    by_block = {}
    for f in frames:
        by_block.setdefault(f["rgb_stamp_ns"] // 250_000_000, set()).add(f["split"])
    assert len(by_block) >= 4 and all(len(v) == 1 for v in by_block.values())
    assert {"train", "test"} == set().union(*by_block.values())


def test_32fc1_depth_to_millimetres_and_lower_resolution_x(tmp_path):
    info = write_synthetic_bag(tmp_path / "depth_bag", n_frames=6, fps=10, storage="mcap", height=H, width=W,
                               thermal_encoding="32FC1", x_scale=2, rgb_topic=RGB_T, x_topic=X_T, seed=4)
    out = tmp_path / "ds"
    s = extract([info["path"]], out, cfg())
    assert s.written == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality"] == "depth"
    f = manifest["frames"][0]
    assert f["x_encoding"] == "32FC1" and f["x_size"] == [W // 2, H // 2] and f["size"] == [W, H]
    modal = png(out / "Modal" / f"{f['name']}.png")
    assert modal.dtype == np.uint16 and modal.shape == (H, W)  # resized (nearest) to the RGB size
    k = info["rgb_stamps"].index(f["rgb_stamp_ns"])
    depth = make_scene(info["scene_seeds"][k], H, W, night=info["nights"][k])["x"][::2, ::2] / 25.5
    expect = np.round(depth.astype(np.float32) * 1000).astype(np.uint16)
    expect[::7, ::5] = 0  # the NaN holes are stored as 0 = invalid
    np.testing.assert_array_equal(modal[::2, ::2], expect)


def test_depth_to_mm_edge_cases():
    d = np.array([[1.2344, np.nan, np.inf], [-1.0, 0.0, 70.0], [0.0004, 0.0006, 65.535]], np.float32)
    assert depth_to_mm(d).tolist() == [[1234, 0, 0], [0, 0, 0], [0, 1, 65535]]
    assert depth_to_mm(d).dtype == np.uint16


def test_compressed_rgb_topic(tmp_path):
    info = write_synthetic_bag(tmp_path / "comp", n_frames=5, fps=10, storage="sqlite3", height=H, width=W,
                               rgb_format="png", rgb_topic=RGB_T, x_topic=X_T, seed=8)
    out = tmp_path / "ds"
    s = extract([info["path"]], out, cfg())
    assert s.written == 5
    f = json.loads((out / "manifest.json").read_text())["frames"][0]
    assert f["rgb_encoding"].startswith("rgb8; png")
    k = info["rgb_stamps"].index(f["rgb_stamp_ns"])
    np.testing.assert_array_equal(png(out / "RGB" / f"{f['name']}.png"), scene_of(info, k)["rgb"])


# ---- errors ---------------------------------------------------------------------------------------------

def test_missing_topic_names_bag_and_lists_topics(bags, tmp_path, capsys):
    path = bags["mcap"]["path"]
    rc = cli_main(["extract", str(path), "--rgb-topic", RGB_T, "--x-topic", "/thermal", "--out",
                   str(tmp_path / "ds"), "--quiet"])
    assert rc == 1
    text = capsys.readouterr()
    msg = text.out + text.err
    assert f"{path}: topic '/thermal' not found; the bag has: {RGB_T} (sensor_msgs/msg/Image, 30 msgs)" in msg
    assert "/rosout_text (std_msgs/msg/String, 1 msgs)" in msg


def test_wrong_message_type(bags, tmp_path):
    s = extract([bags["mcap"]["path"]], tmp_path / "ds", cfg(x_topic="/rosout_text"))
    assert s.failed and "carries std_msgs/msg/String, not sensor_msgs/Image" in s.failed[0].error


def test_truncated_bag_fails_clearly_and_others_are_kept(bags, tmp_path, capsys):
    bad = tmp_path / "cut_bag"
    shutil.copytree(bags["mcap"]["path"], bad)
    data = next(bad.glob("*.mcap"))
    os.truncate(data, data.stat().st_size * 2 // 3)
    out = tmp_path / "ds"
    rc = cli_main(["extract", str(bad), str(bags["sqlite3"]["path"]), "--rgb-topic", RGB_T, "--x-topic", X_T,
                   "--out", str(out), "--quiet"])
    assert rc == 1
    printed = capsys.readouterr().out
    assert f"{bad}: cannot open bag directory" in printed and "truncated or damaged" in printed
    assert "dataset: 10 frames" in printed  # the good bag was extracted
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bags"]["cut_bag"]["status"] == "error" and manifest["counts"]["frames"] == 10


def test_bag_damaged_mid_read_keeps_frames_before_the_damage(bags, tmp_path):
    from sigma_ros.data.bags import open_bag

    bad = tmp_path / "damaged"
    shutil.copytree(bags["sqlite3"]["path"], bad)
    db = next(bad.glob("*.db3"))
    # Damage the storage of one message in the middle of the bag: an RGB image (9 kB) spans several sqlite
    # pages chained by a 4-byte "next page" pointer at the start of each overflow page; break the chain there.
    reader = open_bag(bad)
    raw = [bytes(r) for _, _, r in reader.messages()][30]
    reader.close()
    blob = db.read_bytes()
    chunk = raw[len(raw) // 2:len(raw) // 2 + 64]
    assert blob.count(chunk) == 1
    with open(db, "r+b") as f:
        f.seek(blob.find(chunk) // 4096 * 4096)
        f.write(b"\xff" * 4)
    s = extract([bad], tmp_path / "ds", cfg())
    assert s.failed and "bag is damaged: reading failed after" in s.failed[0].error
    assert str(bad) in s.failed[0].error
    kept = s.bags[0].written
    assert 0 < kept < 10
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["counts"]["frames"] == kept
    for f in manifest["frames"]:
        assert (tmp_path / "ds" / "RGB" / f"{f['name']}.png").is_file()


def test_bad_arguments(bags, tmp_path, capsys):
    out = tmp_path / "ds"
    extract([bags["mcap"]["path"]], out, cfg())
    # the same folder cannot mix extractions of other topics
    rc = cli_main(["extract", str(bags["mcap"]["path"]), "--rgb-topic", RGB_T, "--x-topic", LAB_T, "--out", str(out),
                   "--quiet"])
    assert rc == 2 and "holds an extraction of topics" in capsys.readouterr().err
    with pytest.raises(ValueError, match="test-fraction"):
        extract([bags["mcap"]["path"]], tmp_path / "x", cfg(test_fraction=1.5))
    with pytest.raises(ValueError, match="different topics"):
        extract([bags["mcap"]["path"]], tmp_path / "x", cfg(x_topic=RGB_T))
    s = extract([tmp_path / "no_such_bag"], tmp_path / "y", cfg())
    assert "no such bag" in s.failed[0].error


def test_cli_summary(bags, tmp_path, capsys):
    rc = cli_main(["extract", str(bags["mcap"]["path"]), str(bags["sqlite3"]["path"]), "--rgb-topic", RGB_T,
                   "--x-topic", X_T, "--label-topic", LAB_T, "--out", str(tmp_path / "ds"), "--slop", "0.02",
                   "--test-fraction", "0.25", "--seed", "7", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "pairs found 20, written 20" in out
    assert "sync offset |x - rgb|: mean" in out and "(slop 20 ms)" in out
    assert "dataset: 20 frames" in out


@pytest.mark.parametrize("distro,storage", [("humble", "sqlite3"), ("humble", "mcap")])
def test_humble_typestore_bags(tmp_path, distro, storage):
    info = write_synthetic_bag(tmp_path / "humble_bag", n_frames=4, fps=10, storage=storage, height=H, width=W,
                               rgb_topic=RGB_T, x_topic=X_T, distro=distro, thermal_encoding="mono8", seed=2)
    out = tmp_path / "ds"
    s = extract([info["path"]], out, cfg())
    assert s.written == 4 and not s.failed
    f = json.loads((out / "manifest.json").read_text())["frames"][0]
    k = info["rgb_stamps"].index(f["rgb_stamp_ns"])
    modal = png(out / "Modal" / f"{f['name']}.png")
    assert modal.dtype == np.uint8  # mono8 thermal stays 8-bit
    np.testing.assert_array_equal(modal, scene_of(info, k)["x"])
