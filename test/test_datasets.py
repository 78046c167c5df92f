"""sigma_ros.data.datasets: every layout on real PNG folders written here, and on the real samples in ../shared."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sigma_ros.data.datasets import DatasetError, detect_layout, open_dataset, read_image, write_png

H, W = 12, 16


def rnd(seed, shape, dtype=np.uint8, high=None):
    rng = np.random.default_rng(seed)
    high = high if high is not None else np.iinfo(dtype).max + 1
    return rng.integers(0, high, shape, dtype=np.int64).astype(dtype)


def save(path: Path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)


def make_sigma(root: Path, names=("a", "b", "c"), x_dir="Modal", x16=True, labels=True, lists=None, ext=".png"):
    items = {}
    for k, n in enumerate(names):
        rgb = rnd(k, (H, W, 3))
        x = rnd(100 + k, (H, W), np.uint16 if x16 else np.uint8)
        lab = rnd(200 + k, (H, W), high=9)
        save(root / "RGB" / f"{n}{ext}", rgb)
        save(root / x_dir / f"{n}.png", x)
        if labels:
            save(root / "Label" / f"{n}.png", lab)
        items[n] = (rgb, x, lab)
    lists = lists or {"train": list(names[:-1]), "test": [names[-1]]}
    for split, lines in lists.items():
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return items


def test_sigma_layout_items_and_16bit_x(tmp_path):
    items = make_sigma(tmp_path)
    assert detect_layout(tmp_path) == "sigma"
    ds = open_dataset(tmp_path, "train")
    assert ds.layout == "sigma" and len(ds) == 2 and ds.names == ["a", "b"] and not ds.gt_transform
    for item in ds:
        rgb, x, lab = items[item["name"]]
        assert item["rgb"].dtype == np.uint8 and item["rgb"].shape == (H, W, 3)
        assert item["x"].dtype == np.uint16  # 16-bit PNG stays 16-bit
        np.testing.assert_array_equal(item["rgb"], rgb)
        np.testing.assert_array_equal(item["x"], x)
        np.testing.assert_array_equal(item["label"], lab)
    test = open_dataset(tmp_path, "test")
    assert test.names == ["c"] and test[0]["name"] == "c"


def test_list_lines_with_prefix_extension_and_columns(tmp_path):
    make_sigma(tmp_path, lists={"train": ["RGB/a.png Label/a.png", "b.png", "  c  ", "", "# comment"],
                                "test": ["a"]})
    ds = open_dataset(tmp_path, "train")
    assert ds.names == ["a", "b", "c"]
    assert ds.paths(0)["rgb"].name == "a.png"


def test_thermal_as_three_equal_channels_becomes_one_and_colour_x_stays(tmp_path):
    make_sigma(tmp_path, x16=False)
    grey = rnd(5, (H, W))
    save(tmp_path / "Modal" / "a.png", np.stack([grey] * 3, axis=-1))
    jet = rnd(6, (H, W, 3))
    save(tmp_path / "Modal" / "b.png", jet)
    ds = open_dataset(tmp_path, "train")
    np.testing.assert_array_equal(ds[0]["x"], grey)
    np.testing.assert_array_equal(ds[1]["x"], jet)


def test_no_label_folder_gives_none_and_require_labels(tmp_path):
    make_sigma(tmp_path, labels=False)
    assert open_dataset(tmp_path, "train")[0]["label"] is None
    with pytest.raises(DatasetError, match="no label folder"):
        open_dataset(tmp_path, "train", require_labels=True)


def test_mfnet_layout(tmp_path):
    names = ["00001D", "00002N", "00003N"]
    truth = {}
    for k, n in enumerate(names):
        four = rnd(k, (H, W, 4))
        save(tmp_path / "images" / f"{n}.png", four, "RGBA")
        lab = rnd(50 + k, (H, W), high=9)
        save(tmp_path / "labels" / f"{n}.png", lab)
        truth[n] = (four, lab)
    (tmp_path / "train.txt").write_text("00001D\n00002N\n")
    (tmp_path / "val.txt").write_text("00003N\n")
    (tmp_path / "test.txt").write_text("00003N\n")
    assert detect_layout(tmp_path) == "mfnet"
    ds = open_dataset(tmp_path, "train")
    assert ds.modality == "thermal" and len(ds) == 2
    for item in ds:
        four, lab = truth[item["name"]]
        np.testing.assert_array_equal(item["rgb"], four[..., :3])
        np.testing.assert_array_equal(item["x"], four[..., 3])
        assert item["x"].shape == (H, W)
        np.testing.assert_array_equal(item["label"], lab)
    assert open_dataset(tmp_path, "val").names == ["00003N"]


def test_mfnet_image_that_is_not_four_channels(tmp_path):
    save(tmp_path / "images" / "x.png", rnd(0, (H, W, 3)))
    (tmp_path / "labels").mkdir()
    save(tmp_path / "labels" / "x.png", rnd(0, (H, W), high=3))
    (tmp_path / "train.txt").write_text("x\n")
    with pytest.raises(DatasetError, match="4-channel"):
        open_dataset(tmp_path)[0]


def test_pst900_layout(tmp_path):
    truth = {}
    for split, names in (("train", ["32_bag_1", "33_bag_2"]), ("test", ["40_bag_9"])):
        for k, n in enumerate(names):
            rgb, th, lab = rnd(k, (H, W, 3)), rnd(10 + k, (H, W)), rnd(20 + k, (H, W), high=5)
            save(tmp_path / split / "rgb" / f"{n}.png", rgb)
            save(tmp_path / split / "thermal" / f"{n}.png", th)
            save(tmp_path / split / "labels" / f"{n}.png", lab)
            (tmp_path / split / "depth").mkdir(exist_ok=True)
            truth[n] = (rgb, th, lab)
    assert detect_layout(tmp_path) == "pst900"
    ds = open_dataset(tmp_path, "train")
    assert ds.names == ["32_bag_1", "33_bag_2"] and ds.modality == "thermal"
    for item in ds:
        rgb, th, lab = truth[item["name"]]
        np.testing.assert_array_equal(item["rgb"], rgb)
        np.testing.assert_array_equal(item["x"], th)
        np.testing.assert_array_equal(item["label"], lab)
    assert open_dataset(tmp_path, "test").names == ["40_bag_9"]
    os.remove(tmp_path / "train" / "thermal" / "33_bag_2.png")
    with pytest.raises(DatasetError, match=r"no thermal file in thermal/: 33_bag_2"):
        open_dataset(tmp_path, "train")


@pytest.mark.parametrize("style", ["nyu", "sunrgbd"])
def test_rgbd_layouts_apply_gt_transform(tmp_path, style):
    rgb_dir, x_dir, lab_dir, lst = (("RGB", "Depth", "Label", "train.txt") if style == "nyu" else
                                    ("RGB_resize", "Depth_resize", "labels_resize", "train2.txt"))
    smooth = np.linspace(0, 255, W, dtype=np.float32)[None, :, None] * np.ones((H, 1, 3), np.float32)
    rgb, depth = (smooth * [1.0, 0.5, 0.2]).astype(np.uint8), rnd(2, (H, W), np.uint16)
    raw = rnd(3, (H, W), high=41)  # NYU: 0 = unlabeled, 1..40 classes
    raw[0, :4] = 0
    save(tmp_path / rgb_dir / "0001.jpg", rgb)
    save(tmp_path / x_dir / "0001.png", depth)
    save(tmp_path / lab_dir / "0001.png", raw)
    (tmp_path / lst).write_text("RGB/0001.jpg Label/0001.png\n")
    assert detect_layout(tmp_path) == "rgbd"
    ds = open_dataset(tmp_path, "train", layout=style)
    assert ds.layout == "rgbd" and ds.gt_transform and ds.modality == "depth"
    item = ds[0]
    assert item["x"].dtype == np.uint16
    np.testing.assert_array_equal(item["x"], depth)
    expect = raw.astype(np.int64) - 1
    expect[expect < 0] = 255
    np.testing.assert_array_equal(item["label"], expect)
    assert (item["label"][0, :4] == 255).all()
    assert np.abs(item["rgb"].astype(int) - rgb).mean() < 8  # JPEG: lossy but the same picture
    # the convention can be overridden
    np.testing.assert_array_equal(open_dataset(tmp_path, "train", gt_transform=False)[0]["label"], raw)


def test_hha_folder_is_rgbd(tmp_path):
    save(tmp_path / "RGB" / "1.png", rnd(0, (H, W, 3)))
    save(tmp_path / "HHA" / "1.png", rnd(1, (H, W, 3)))
    (tmp_path / "test.txt").write_text("1\n")
    ds = open_dataset(tmp_path, "test")
    assert ds.layout == "rgbd" and ds[0]["x"].shape == (H, W, 3)


# ---- errors ---------------------------------------------------------------------------------------------

def test_missing_root_and_unknown_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "pictures").mkdir()
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(DatasetError, match=r"no known dataset layout. Found: pictures/, notes.txt"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="unknown layout 'coco'"):
        open_dataset(tmp_path, layout="coco")


def test_missing_list_and_missing_x_folder(tmp_path):
    make_sigma(tmp_path)
    os.remove(tmp_path / "test.txt")
    with pytest.raises(DatasetError, match=r"no list for split 'test' \(looked for test.txt"):
        open_dataset(tmp_path, "test")
    with pytest.raises(DatasetError, match="needs RGB/ and an X folder"):
        open_dataset(tmp_path / "RGB", "train", layout="sigma")


def test_list_naming_missing_files(tmp_path):
    make_sigma(tmp_path, lists={"train": ["a", "b", "ghost1", "ghost2"], "test": ["c"]})
    with pytest.raises(DatasetError, match=r"train.txt names 2 item\(s\) with no RGB file in RGB/: ghost1, ghost2"):
        open_dataset(tmp_path, "train")
    os.remove(tmp_path / "Label" / "c.png")
    with pytest.raises(DatasetError, match=r"no label file in Label/: c"):
        open_dataset(tmp_path, "test")


def test_size_mismatch(tmp_path):
    make_sigma(tmp_path)
    save(tmp_path / "Modal" / "a.png", rnd(0, (H, W + 2), np.uint16))
    save(tmp_path / "Label" / "b.png", rnd(0, (H - 1, W)))
    ds = open_dataset(tmp_path, "train")
    with pytest.raises(DatasetError, match=rf"item 'a': X image .*a.png is {W + 2}x{H} but RGB image .* is {W}x{H}"):
        ds[0]
    with pytest.raises(DatasetError, match=rf"item 'b': label .*b.png is {W}x{H - 1}"):
        ds[1]
    with pytest.raises(DatasetError):
        ds.check()


def test_corrupt_png_and_colour_label(tmp_path):
    make_sigma(tmp_path)
    p = tmp_path / "RGB" / "a.png"
    p.write_bytes(p.read_bytes()[:40])
    save(tmp_path / "Label" / "b.png", rnd(0, (H, W, 3)))
    ds = open_dataset(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"a.png: cannot read image"):
        ds[0]
    with pytest.raises(DatasetError, match="label is a colour image"):
        ds[1]


def test_empty_split_and_pst900_without_split(tmp_path):
    make_sigma(tmp_path, lists={"train": [], "test": ["c"]})
    with pytest.raises(DatasetError, match="split 'train' is empty"):
        open_dataset(tmp_path, "train")
    pst = tmp_path / "pst"
    save(pst / "train" / "rgb" / "1.png", rnd(0, (H, W, 3)))
    save(pst / "train" / "thermal" / "1.png", rnd(0, (H, W)))
    with pytest.raises(DatasetError, match="has no test/ folder"):
        open_dataset(pst, "test")


def test_write_png_round_trip_and_atomic(tmp_path):
    for arr in (rnd(0, (H, W)), rnd(1, (H, W), np.uint16), rnd(2, (H, W, 3))):
        p = tmp_path / f"{arr.dtype}_{arr.ndim}.png"
        write_png(p, arr)
        back = read_image(p, "x" if arr.ndim == 2 else "rgb")
        assert back.dtype == arr.dtype
        np.testing.assert_array_equal(back, arr)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    with pytest.raises(ValueError, match="unsupported array"):
        write_png(tmp_path / "bad.png", np.zeros((H, W), np.float32))


# ---- real samples in ../shared/data ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def samples(shared_dir):
    data = shared_dir / "data"
    if not data.is_dir():
        pytest.skip("../shared/data is not present")
    return data


def test_real_mfnet_frames(samples, tmp_path):
    src = samples / "mfnet_sample"
    if not src.is_dir():
        pytest.skip("mfnet_sample absent")
    (tmp_path / "images").mkdir()
    for f in sorted(src.glob("*.png")):
        (tmp_path / "images" / f.name).symlink_to(f)
    (tmp_path / "test.txt").write_text("01234N\n01477D\n")
    ds = open_dataset(tmp_path, "test")
    assert ds.layout == "mfnet" and len(ds) == 2
    for item in ds:
        raw = np.asarray(Image.open(src / f"{item['name']}.png"))
        assert item["rgb"].shape == (480, 640, 3) and item["x"].shape == (480, 640)
        np.testing.assert_array_equal(item["x"], raw[..., 3])
        np.testing.assert_array_equal(item["rgb"], raw[..., :3])
        assert item["label"] is None
        assert item["x"].std() > 5  # a real thermal image, not a constant alpha
    # the night frame is darker in RGB than the day frame
    night, day = ds[0], ds[1]
    assert night["rgb"].mean() < day["rgb"].mean()


def test_real_pst900_frame(samples, tmp_path):
    src = samples / "pst900_sample"
    if not src.is_dir():
        pytest.skip("pst900_sample absent")
    for sub, f in (("rgb", "rgb.png"), ("thermal", "thermal.png")):
        (tmp_path / "test" / sub).mkdir(parents=True)
        (tmp_path / "test" / sub / "frame.png").symlink_to(src / f)
    # its ground truth ships as colours: turn it into a class-index PNG as PST900's labels/ holds it
    colours = np.asarray(Image.open(src / "label_color.png"))
    idx = np.zeros(colours.shape[:2], np.uint8)
    for k, c in enumerate([(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        idx[(colours == c).all(-1)] = k
    save(tmp_path / "test" / "labels" / "frame.png", idx)
    ds = open_dataset(tmp_path, "test")
    assert ds.layout == "pst900"
    item = ds[0]
    assert item["rgb"].shape == (720, 1280, 3)
    assert item["x"].shape == (720, 1280) and item["x"].dtype == np.uint8  # 3 equal channels -> 1
    assert set(np.unique(item["label"])) == {0, 1, 2, 3}


def test_real_rgbd_frame_keeps_16bit_depth(samples, tmp_path):
    src = samples / "rgbd_sample"
    if not src.is_dir():
        pytest.skip("rgbd_sample absent")
    (tmp_path / "RGB").mkdir()
    (tmp_path / "Depth").mkdir()
    (tmp_path / "RGB" / "s.png").symlink_to(src / "rgb.png")
    (tmp_path / "Depth" / "s.png").symlink_to(src / "depth.png")
    (tmp_path / "test.txt").write_text("s\n")
    ds = open_dataset(tmp_path, "test", layout="nyu")
    item = ds[0]
    assert item["rgb"].shape == (424, 512, 3)
    assert item["x"].dtype == np.uint16 and item["x"].shape == (424, 512)
    assert item["x"].max() > 255  # real 16-bit values survived
    invalid = (item["x"] == 0).mean()
    assert 0.05 < invalid < 0.2  # about 11% of the pixels have no depth
