"""Class lists and palettes: the four datasets Sigma was released for, and loading a class config from YAML.

A class config file may be a plain mapping (``class_names``, ``palette``, ``modality``, ``preprocessing``) or a ROS 2
parameters file (``/**: {ros__parameters: {...}}``) such as the ones in ``config/``, so the node and the offline tools
read the same files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .postprocess import voc_palette


@dataclass
class ClassConfig:
    name: str
    class_names: list[str]
    palette: np.ndarray  # (K, 3) uint8 RGB
    modality: str = "thermal"  # thermal | depth
    preprocessing: str = "official"  # how the released checkpoints for this dataset expect their input

    def __post_init__(self):
        self.palette = np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)
        if len(self.palette) < len(self.class_names):
            raise ValueError(f"class config {self.name!r}: {len(self.class_names)} classes but only "
                             f"{len(self.palette)} palette colours")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_NYU40 = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes", "ceiling", "books",
    "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person", "night stand",
    "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
]
_SUN37 = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor_mat", "clothes", "ceiling", "books",
    "fridge", "tv", "paper", "towel", "shower_curtain", "box", "whiteboard", "person", "night_stand", "toilet", "sink",
    "lamp", "bathtub", "bag",
]


def _dataset(name, names, modality):
    return ClassConfig(name, names, voc_palette(len(names)), modality=modality, preprocessing="official")


# Class order as in the authors' configs; palettes as their visualisation (PASCAL-VOC colour map).
DATASETS: dict[str, ClassConfig] = {
    "mfnet": _dataset("mfnet", ["unlabeled", "car", "person", "bike", "curve", "car stop", "guardrail",
                                "color cone", "bump"], "thermal"),
    "pst900": _dataset("pst900", ["background", "fire extinguisher", "backpack", "hand drill", "survivor"],
                       "thermal"),
    "nyu": _dataset("nyu", _NYU40, "depth"),
    "sunrgbd": _dataset("sunrgbd", _SUN37, "depth"),
}


def generic_classes(num_classes: int) -> ClassConfig:
    """Names and colours for a checkpoint that carries none."""
    return ClassConfig("generic", [f"class_{i}" for i in range(num_classes)], voc_palette(num_classes))


def load_class_config(spec) -> ClassConfig:
    """A built-in dataset name ('mfnet', 'pst900', 'nyu', 'sunrgbd') or the path of a YAML class config."""
    if isinstance(spec, ClassConfig):
        return spec
    if str(spec) in DATASETS:
        return DATASETS[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"class config {spec!r}: neither a built-in dataset ({', '.join(DATASETS)}) nor a file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    params = _ros_parameters(doc) if isinstance(doc, dict) else None
    if not params or "class_names" not in params:
        raise ValueError(f"{path}: no 'class_names' list (plain mapping or '/**: ros__parameters:' file expected)")
    names = [str(n) for n in params["class_names"]]
    palette = params.get("palette")
    try:
        palette = voc_palette(len(names)) if palette is None else np.asarray(palette, dtype=np.int64).reshape(-1, 3)
        if palette.min() < 0 or palette.max() > 255:
            raise ValueError("palette values must be 0..255")
        return ClassConfig(str(params.get("dataset", path.stem)), names, palette,
                           modality=str(params.get("modality", "thermal")),
                           preprocessing=str(params.get("preprocessing", "rgb")))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _ros_parameters(doc: dict) -> dict:
    """The parameter mapping of a ROS params file (any node key, e.g. '/**'), or the mapping itself."""
    for value in doc.values():
        if isinstance(value, dict) and isinstance(value.get("ros__parameters"), dict):
            return value["ros__parameters"]
    return doc
