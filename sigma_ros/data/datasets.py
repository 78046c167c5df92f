"""Readers for the RGB-X dataset layouts users have, all yielding the same item dict.

Every item is ``{"rgb": (H,W,3) uint8 in RGB order, "x": (H,W) uint8/uint16 or (H,W,3) uint8, "label": (H,W) uint8
with 255 = ignore, or None, "name": str}``. (Sigma's own loader reads RGB with OpenCV, i.e. BGR in memory; ours always
returns RGB and the "official" preprocessing profile does the swap.) PNGs are read with Pillow; 16-bit PNGs stay
uint16. A thermal image stored as three equal grey channels (PST900) is returned as (H,W).

Layouts (``open_dataset(root, split, layout="auto")`` detects them in this order):

``mfnet``    MFNet as released: ``images/<name>.png`` 4-channel (RGB + thermal in the alpha channel),
             ``labels/<name>.png``, lists ``train.txt`` / ``val.txt`` / ``test.txt`` (+ ``test_day.txt``...).
``pst900``   PST900 as released: ``train/`` and ``test/``, each with ``rgb/``, ``thermal/``, ``labels/`` (and
             ``depth/``, unused); the split is the folder, items are the files in ``rgb/``.
``sigma``    the Sigma/CMX layout: ``RGB/``, ``Modal/`` (or ``Thermal/``), ``Label/`` and ``<split>.txt`` lists
             (also the ``*_resize`` folder names of Sigma's PST900 config). Labels are used as stored.
``rgbd``     the Sigma layout of NYU Depth V2 / SUN RGB-D: ``RGB/`` (or ``RGB_resize/``), ``Depth/`` or ``HHA/``
             (``Depth_resize/``), ``Label/`` (``labels_resize/``), lists ``train.txt``/``test.txt`` (or
             ``train2.txt``/``test2.txt``). Labels get Sigma's ``gt_transform``: ``label - 1`` in uint8, so 0
             (unlabeled) becomes 255 (ignore). Aliases: ``nyu``, ``sunrgbd``.

List lines may carry a folder prefix, an extension and extra columns (``RGB/0001.jpg Label/0001.png``): the first
column's file stem is the item name, as in Sigma's loader. Files are matched by stem, any image extension.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = [
    "DatasetError", "RGBXDataset", "open_dataset", "detect_layout", "read_image", "write_png", "LAYOUTS",
]

LAYOUTS = ("mfnet", "pst900", "sigma", "rgbd")
_ALIASES = {"nyu": "rgbd", "sunrgbd": "rgbd", "cmx": "sigma", "nyudv2": "rgbd"}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Folder names per role, in preference order (case-sensitive first, then case-insensitive match).
_RGB_DIRS = ("RGB", "rgb", "RGB_resize", "rgb_resize", "Rgb")
_THERMAL_DIRS = ("Modal", "Thermal", "thermal", "Thermal_resize", "thermal_resize", "modal", "X", "x")
_DEPTH_DIRS = ("Depth", "depth", "HHA", "hha", "Depth_resize", "depth_resize", "HHA_resize")
_LABEL_DIRS = ("Label", "label", "Labels", "labels", "labels_resize", "Label_resize", "GT", "gt")
_LISTS = {
    "train": ("train.txt", "train2.txt", "training.txt"),
    "test": ("test.txt", "test2.txt", "val.txt", "eval.txt"),
    "val": ("val.txt", "test.txt", "test2.txt", "eval.txt"),
}


class DatasetError(ValueError):
    """A dataset folder that cannot be read as asked (the message names the folder/file and the problem)."""


# ---- image files -------------------------------------------------------------------------------------------

def read_image(path: str | os.PathLike, role: str = "rgb") -> np.ndarray:
    """Read one image file for a role: "rgb" -> (H,W,3) uint8; "x" -> (H,W) uint8/uint16 or (H,W,3) uint8;
    "label" -> (H,W) uint8 (palette PNGs give their indices). Raises DatasetError naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if role == "rgb":
                return np.asarray(im if mode == "RGB" else im.convert("RGB"))
            if role == "label":
                return _label_array(im, path)
            return _x_array(im, path)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        if isinstance(e, FileNotFoundError):
            raise DatasetError(f"{path}: file not found") from None
        raise DatasetError(f"{path}: cannot read image ({e})") from None


def _x_array(im, path: Path) -> np.ndarray:
    mode = im.mode
    if mode in ("L", "I;16", "I;16L", "I;16B"):
        a = np.asarray(im)
        return a.astype(np.uint16) if a.dtype != np.uint8 else a
    if mode in ("I", "F"):
        a = np.asarray(im)
        if a.min() < 0 or a.max() > 65535 or (mode == "F" and not np.array_equal(a, np.round(a))):
            raise DatasetError(f"{path}: X image of mode {mode} has values outside 0..65535 integers")
        return a.astype(np.uint16)
    if mode in ("RGB", "RGBA", "P", "LA"):
        a = np.asarray(im.convert("RGB"))
        if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
            return np.ascontiguousarray(a[..., 0])  # grey stored as three equal channels
        return a
    raise DatasetError(f"{path}: unsupported image mode {mode} for the X modality")


def _label_array(im, path: Path) -> np.ndarray:
    mode = im.mode
    if mode in ("L", "P"):
        return np.asarray(im)
    if mode in ("I;16", "I;16L", "I;16B", "I"):
        a = np.asarray(im)
        if a.max() > 255 or a.min() < 0:
            raise DatasetError(f"{path}: label values up to {int(a.max())} do not fit 0..255 (uint8 labels)")
        return a.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        a = np.asarray(im)
        if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
            return np.ascontiguousarray(a[..., 0])
        raise DatasetError(f"{path}: label is a colour image; class-index PNGs (one channel) are expected")
    raise DatasetError(f"{path}: unsupported label image mode {mode}")


def write_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 1) -> None:
    """Write (H,W) uint8 / uint16 or (H,W,3) uint8 as a lossless PNG, atomically (temp file + rename), so an
    interrupted run never leaves a truncated file under the final name."""
    from PIL import Image

    path = Path(path)
    a = np.asarray(array)
    if a.dtype == np.uint8 and a.ndim == 2:
        im = Image.fromarray(a, "L")
    elif a.dtype == np.uint16 and a.ndim == 2:
        im = Image.fromarray(np.ascontiguousarray(a, dtype="<u2"))  # -> mode I;16 (16-bit grey PNG)
    elif a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        im = Image.fromarray(a, "RGB")
    else:
        raise ValueError(f"write_png({path}): unsupported array {a.dtype} {a.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            im.save(f, format="PNG", compress_level=compress_level)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- layout detection ---------------------------------------------------------------------------------------

def _find_dir(root: Path, names) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    lower = {n.lower() for n in names}
    for p in sorted(root.iterdir()) if root.is_dir() else ():
        if p.is_dir() and p.name.lower() in lower:
            return p
    return None


def _subdirs(root: Path) -> str:
    names = sorted(p.name + "/" for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    files = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix == ".txt") if root.is_dir() else []
    return ", ".join(names + files) or "nothing"


def detect_layout(root: str | os.PathLike) -> str:
    """The layout name of a dataset folder (see the module docstring); DatasetError when none fits."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    if (root / "images").is_dir() and ((root / "labels").is_dir() or
                                       any((root / f"{s}.txt").is_file() for s in ("train", "val", "test"))):
        return "mfnet"
    for split in ("train", "test"):
        if (root / split).is_dir() and _find_dir(root / split, _RGB_DIRS) is not None:
            return "pst900"
    if _find_dir(root, _RGB_DIRS) is not None:
        if _find_dir(root, _THERMAL_DIRS) is not None:
            return "sigma"
        if _find_dir(root, _DEPTH_DIRS) is not None:
            return "rgbd"
    raise DatasetError(
        f"{root}: no known dataset layout. Found: {_subdirs(root)}. Expected one of: "
        "Sigma (RGB/, Modal/ or Thermal/, Label/, train.txt, test.txt); NYU/SUN RGB-D as Sigma has them (RGB/, "
        "Depth/ or HHA/, Label/, lists); MFNet (images/ 4-channel PNGs, labels/, train.txt...); "
        "PST900 (train/ and test/ with rgb/, thermal/, labels/)")


def _index(folder: Path) -> dict[str, Path]:
    """stem -> file for the image files of a folder (one directory listing, not one stat per item)."""
    out = {}
    with os.scandir(folder) as it:
        for e in it:
            name = e.name
            ext = os.path.splitext(name)[1].lower()
            if ext in IMAGE_EXTS and not name.startswith("."):
                stem = name[: -len(ext)]
                if stem not in out or ext == ".png":  # prefer PNG when both exist
                    out[stem] = Path(e.path)
    return out


def _read_list(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first = line.split()[0]
        base = first.replace("\\", "/").rsplit("/", 1)[-1]
        stem, ext = os.path.splitext(base)
        names.append(stem if ext.lower() in IMAGE_EXTS else base)
    return names


def _list_file(root: Path, split: str) -> Path:
    candidates = _LISTS.get(split, (f"{split}.txt",))
    for c in candidates:
        if (root / c).is_file():
            return root / c
    raise DatasetError(f"{root}: no list for split {split!r} (looked for {', '.join(candidates)}); "
                       f"found {_subdirs(root)}")


# ---- the dataset ---------------------------------------------------------------------------------------------

@dataclass
class RGBXDataset:
    """An opened dataset split: ``len(ds)``, ``ds[i]`` -> item dict, iteration, ``ds.paths(i)``."""

    root: Path
    split: str
    layout: str
    names: list
    rgb_files: list
    x_files: list  # None entries for MFNet (X lives in the RGB file's alpha channel)
    label_files: list | None
    gt_transform: bool = False
    modality: str | None = None  # "thermal" | "depth" | None (unknown)
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    def paths(self, i: int) -> dict:
        return {"rgb": self.rgb_files[i], "x": self.x_files[i],
                "label": None if self.label_files is None else self.label_files[i]}

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        name = self.names[i]
        if self.layout == "mfnet":
            four = _read_mfnet(self.rgb_files[i])
            rgb, x = np.ascontiguousarray(four[..., :3]), np.ascontiguousarray(four[..., 3])
        else:
            rgb = read_image(self.rgb_files[i], "rgb")
            x = read_image(self.x_files[i], "x")
        label = None
        if self.label_files is not None:
            label = read_image(self.label_files[i], "label")
            if self.gt_transform:
                label = label - np.uint8(1)  # Sigma's gt_transform: uint8 wrap-around, 0 -> 255 (ignore)
        h, w = rgb.shape[:2]
        if x.shape[:2] != (h, w):
            raise DatasetError(f"{self.root}: item {name!r}: X image {self.x_files[i]} is {x.shape[1]}x{x.shape[0]}"
                               f" but RGB image {self.rgb_files[i]} is {w}x{h}")
        if label is not None and label.shape != (h, w):
            raise DatasetError(f"{self.root}: item {name!r}: label {self.label_files[i]} is "
                               f"{label.shape[1]}x{label.shape[0]} but RGB image {self.rgb_files[i]} is {w}x{h}")
        return {"rgb": rgb, "x": x, "label": label, "name": name}

    def check(self, limit: int | None = None) -> int:
        """Read items (all, or the first ``limit``) so that any unreadable file or size mismatch raises now."""
        n = len(self) if limit is None else min(limit, len(self))
        for i in range(n):
            self[i]
        return n


def _read_mfnet(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode != "RGBA":
                raise DatasetError(f"{path}: MFNet images are 4-channel PNGs (RGB + thermal as alpha); "
                                   f"this one is mode {im.mode}")
            return np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from None


def _match(root: Path, split_desc: str, names: list[str], folder: Path, what: str) -> list[Path]:
    index = _index(folder)
    missing = [n for n in names if n not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise DatasetError(f"{root}: {split_desc} names {len(missing)} item(s) with no {what} file in "
                           f"{folder.name}/: {shown}")
    return [index[n] for n in names]


def open_dataset(root: str | os.PathLike, split: str = "train", layout: str = "auto",
                 gt_transform: bool | None = None, require_labels: bool = False) -> RGBXDataset:
    """Open one split of a dataset folder. ``layout``: "auto" or one of LAYOUTS (aliases nyu, sunrgbd, cmx).

    ``gt_transform`` overrides the layout's label convention (True: label - 1, 0 -> 255 ignore).
    ``require_labels``: raise when the split has no label folder (training/evaluation need one).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist" if not root.exists() else
                           f"{root}: not a directory")
    layout = _ALIASES.get(layout, layout)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose auto, {', '.join(LAYOUTS)} (or nyu, sunrgbd, cmx)")

    label_files = None
    modality = None
    if layout == "mfnet":
        images = root / "images"
        if not images.is_dir():
            raise DatasetError(f"{root}: MFNet layout needs images/ (found {_subdirs(root)})")
        lst = _list_file(root, split)
        names = _read_list(lst)
        rgb_files = _match(root, lst.name, names, images, "image")
        x_files = [None] * len(names)
        if (root / "labels").is_dir():
            label_files = _match(root, lst.name, names, root / "labels", "label")
        modality = "thermal"
        default_gt = False
    elif layout == "pst900":
        base = root / split
        if not base.is_dir():
            have = [p.name for p in root.iterdir() if p.is_dir()]
            raise DatasetError(f"{root}: PST900 layout has no {split}/ folder (found {', '.join(sorted(have))})")
        rgb_dir = _find_dir(base, _RGB_DIRS)
        x_dir = _find_dir(base, _THERMAL_DIRS)
        if rgb_dir is None or x_dir is None:
            raise DatasetError(f"{base}: PST900 split folders need rgb/ and thermal/ (found {_subdirs(base)})")
        rgb_index = _index(rgb_dir)
        names = sorted(rgb_index)
        desc = f"{split}/{rgb_dir.name}/"
        rgb_files = [rgb_index[n] for n in names]
        x_files = _match(base, desc, names, x_dir, "thermal")
        lab_dir = _find_dir(base, _LABEL_DIRS)
        if lab_dir is not None:
            label_files = _match(base, desc, names, lab_dir, "label")
        modality = "thermal"
        default_gt = False
    else:
        rgb_dir = _find_dir(root, _RGB_DIRS)
        x_dir = _find_dir(root, _THERMAL_DIRS if layout == "sigma" else _DEPTH_DIRS)
        if x_dir is None:  # a Sigma layout with a depth folder, or an rgbd layout with Modal/
            x_dir = _find_dir(root, _DEPTH_DIRS if layout == "sigma" else _THERMAL_DIRS)
        if rgb_dir is None or x_dir is None:
            raise DatasetError(f"{root}: the {layout} layout needs RGB/ and an X folder (Modal/, Thermal/, Depth/ "
                               f"or HHA/); found {_subdirs(root)}")
        lst = _list_file(root, split)
        names = _read_list(lst)
        rgb_files = _match(root, lst.name, names, rgb_dir, "RGB")
        x_files = _match(root, lst.name, names, x_dir, "X")
        lab_dir = _find_dir(root, _LABEL_DIRS)
        if lab_dir is not None:
            label_files = _match(root, lst.name, names, lab_dir, "label")
        if x_dir.name.lower().startswith(("depth", "hha")):
            modality = "depth"
        elif x_dir.name.lower().startswith("thermal"):
            modality = "thermal"
        else:
            modality = _modality_from_metadata(root)
        default_gt = layout == "rgbd"
    if not names:
        raise DatasetError(f"{root}: split {split!r} is empty")
    if require_labels and label_files is None:
        raise DatasetError(f"{root}: split {split!r} has no label folder (Label/, labels/); labels are required")
    return RGBXDataset(root=root, split=split, layout=layout, names=names, rgb_files=rgb_files, x_files=x_files,
                       label_files=label_files, gt_transform=default_gt if gt_transform is None else gt_transform,
                       modality=modality)


def _modality_from_metadata(root: Path) -> str | None:
    """Modal/ says nothing about the modality; our extractor's manifest and the synthetic generator do."""
    import json

    for meta in ("manifest.json", "synthetic.json"):
        p = root / meta
        if p.is_file():
            try:
                doc = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if meta == "synthetic.json":
                return "thermal"
            mod = doc.get("modality")
            if mod in ("thermal", "depth"):
                return mod
    return None
