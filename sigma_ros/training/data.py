"""Datasets for training and evaluation: decoded samples -> preprocessed (and augmented) tensors.

Data order and augmentation are pure functions of (seed, epoch, sample index): the sampler is PyTorch's
``DistributedSampler`` (also with one process), and each sample's augmentation draws from a generator seeded by
(seed, epoch, index). That makes a resumed run see exactly the batches an uninterrupted one would, with any number
of loader workers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from sigma_ros.data.datasets import DatasetError

from .augment import IGNORE_INDEX, augment, blank_modality


def open_split(root: str | Path, split: str, require_labels: bool = True):
    """Open ``split`` of the dataset at ``root`` with the package's readers (any supported layout).

    Raises DatasetError (a ValueError naming the folder and the problem) for missing folders, lists or labels.
    """
    from sigma_ros.data.datasets import open_dataset

    try:
        ds = open_dataset(root, split, require_labels=require_labels)
    except DatasetError:
        raise
    except OSError as e:
        raise DatasetError(f"cannot open split {split!r} of dataset {root}: {e}") from e
    if len(ds) == 0:
        raise DatasetError(f"split {split!r} of dataset {root} has no samples")
    return ds


def sample_label(item: dict, where: str) -> np.ndarray:
    label = item.get("label")
    if label is None:
        raise DatasetError(f"{where} has no label image (Label/ folder missing or incomplete?)")
    label = np.asarray(label)
    if label.ndim != 2:
        raise DatasetError(f"{where}: label must be a single-channel image, got shape {label.shape}")
    return label


def to_tensors(item: dict, profile: str, modality: str, depth_range, where: str, need_label: bool = True):
    """Preprocess one decoded sample -> (rgb (3,H,W), x (3,H,W), label (H,W) int64 or None)."""
    from sigma_ros.preprocess import preprocess_pair

    rgb = np.asarray(item["rgb"])
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DatasetError(f"{where}: RGB image must be (H,W,3), got shape {rgb.shape}")
    rgb_t, x_t = preprocess_pair(rgb, item["x"], profile=profile, modality=modality, depth_range=tuple(depth_range))
    label_t = None
    if need_label:
        label = sample_label(item, where)
        if label.shape != rgb.shape[:2]:
            raise DatasetError(f"{where}: label is {label.shape[1]}x{label.shape[0]} but RGB is "
                               f"{rgb.shape[1]}x{rgb.shape[0]}")
        label_t = torch.from_numpy(label.astype(np.int64))
    return rgb_t, x_t, label_t


def sample_name(base, index: int) -> str:
    try:
        return str(base[index].get("name", index))
    except Exception:  # pragma: no cover - only for messages
        return str(index)


class TrainSet(Dataset):
    """Augmented training samples, indexed by (epoch, index) so augmentation is reproducible."""

    def __init__(self, base, *, crop: tuple[int, int], profile: str = "rgb", modality: str = "thermal",
                 depth_range=(0.0, 10.0), scales=None, scale_range=(0.5, 1.75), flip: bool = True,
                 seed: int = 0, blank: str | None = None, num_classes: int | None = None, root: str = ""):
        self.base, self.crop, self.profile, self.modality = base, tuple(crop), profile, modality
        self.depth_range, self.scales, self.scale_range, self.flip = depth_range, scales, scale_range, flip
        self.seed, self.blank, self.num_classes, self.root = int(seed), blank, num_classes, str(root)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        item = self.base[index]
        where = f"sample {item.get('name', index)!r} of {self.root or 'the dataset'}"
        rgb, x, label = to_tensors(item, self.profile, self.modality, self.depth_range, where)
        if self.num_classes is not None:
            bad = (label >= self.num_classes) & (label != IGNORE_INDEX)
            if bool(bad.any()):
                raise DatasetError(f"{where}: label value {int(label[bad].max())} >= num_classes "
                                   f"{self.num_classes} (use 255 for ignore)")
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch, index]))
        rgb, x, label = augment(rgb, x, label, rng, self.crop, scales=self.scales, scale_range=self.scale_range,
                                flip=self.flip)
        rgb, x = blank_modality(rgb, x, self.blank)
        return rgb, x, label


class EvalSet(Dataset):
    """Preprocessed, un-augmented samples at their native size: (rgb, x, label, name)."""

    def __init__(self, base, *, profile: str = "rgb", modality: str = "thermal", depth_range=(0.0, 10.0),
                 blank: str | None = None, need_label: bool = True, root: str = "",
                 indices: Sequence[int] | None = None):
        self.base, self.profile, self.modality, self.depth_range = base, profile, modality, depth_range
        self.blank, self.need_label, self.root = blank, need_label, str(root)
        self.indices = list(range(len(base))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        item = self.base[self.indices[i]]
        name = str(item.get("name", self.indices[i]))
        where = f"sample {name!r} of {self.root or 'the dataset'}"
        rgb, x, label = to_tensors(item, self.profile, self.modality, self.depth_range, where, self.need_label)
        rgb, x = blank_modality(rgb, x, self.blank)
        return rgb, x, label, name


class EpochBatches:
    """Infinite stream of per-process micro-batches of (epoch, index) keys, starting at micro-batch ``start``.

    Each epoch's order comes from ``DistributedSampler(shuffle=True, seed, drop_last=True).set_epoch(epoch)`` --
    a permutation seeded by seed + epoch, split across ranks -- and incomplete trailing batches are dropped, so
    every step has the same batch size.
    """

    def __init__(self, n: int, batch_size: int, seed: int, world_size: int = 1, rank: int = 0, start: int = 0):
        self.sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.batch_size = int(batch_size)
        self.per_epoch = len(self.sampler) // self.batch_size
        if self.per_epoch < 1:
            raise DatasetError(f"the training split has {n} samples: too few for a batch of {batch_size} per "
                               f"process on {world_size} process(es); lower --batch-size")
        self.start = int(start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            for b in range(offset, self.per_epoch):
                yield [(epoch, i) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]
            epoch, offset = epoch + 1, 0


def collate_train(batch):
    rgb, x, label = zip(*batch)
    return torch.stack(rgb), torch.stack(x), torch.stack(label)


def worker_init(_worker_id: int) -> None:
    # Loader workers must not fight the main process for cores (each does small tensor ops).
    torch.set_num_threads(1)
