"""File-mode image/mask pairs as a Gluon dataset, and the DataLoader that batches them.

Reproducibility: with a seed, each sample's augmentation comes from its own generator derived from
(seed, epoch, index), and the shuffle order from (seed, epoch). Neither depends on which worker process
renders a sample or in which order, so the same seed gives the same batches with any `num_workers`.

Gluon hands the dataset to its worker processes once, when the DataLoader is built, so a later
`dataset.set_epoch()` in the main process never reaches them. The epoch therefore travels with each
index: the loader's sampler yields `SampleKey(epoch, index)` and the dataset reads the epoch from the key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import mxnet as mx
import numpy as np

from gluonseg.data.channels import Sample  # (name, image_path, mask_path): one definition, shared with pairing
from gluonseg.data.images import load_image, load_mask
from gluonseg.data.label_map import LabelMap
from gluonseg.data.transforms import train_transform, val_crop_transform, val_whole_transform
from gluonseg.errors import ClientError
from gluonseg.util import available_cpus

MODES = ("train", "val_crop", "val_whole")

# Separate streams for per-sample augmentation and per-epoch shuffling under one seed.
_AUGMENT_STREAM = 0
_SHUFFLE_STREAM = 1

# More workers than this rarely speeds up decoding + augmentation and costs shared memory per prefetched batch.
MAX_AUTO_WORKERS = 16


class SampleKey(NamedTuple):
    """A dataset index tagged with the epoch it is drawn for (see the module docstring)."""

    epoch: int
    index: int


class SegmentationDataset(mx.gluon.data.Dataset):
    """Loads, label-maps and transforms one pair per item: (image 3xHxW float32, mask HxW float32) NDArrays.

    mode: 'train' (random augmentation to crop_size), 'val_crop' (short side to crop_size, centre crop) or
    'val_whole' (the full image; images differ in size, so batches of one).
    seed: a non-negative integer for reproducible augmentation, or None for fresh OS entropy on every item.
    Items can be indexed with an int (uses the epoch from `set_epoch`) or a `SampleKey`.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        label_map: LabelMap | None = None,
        mode: str = "train",
        crop_size: int = 240,
        base_size: int = 520,
        seed: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if crop_size < 1 or base_size < 2:
            raise ValueError(f"crop_size and base_size must be positive, got {crop_size} and {base_size}")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.samples = list(samples)
        self.label_map = label_map
        self.mode = mode
        self.crop_size = int(crop_size)
        self.base_size = int(base_size)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain int indices (in this process only; the loader passes it in the key)."""
        self.epoch = int(epoch)

    def rng_for(self, epoch: int, index: int) -> np.random.Generator:
        """The generator for one sample in one epoch: fixed by the seed, or fresh entropy without one."""
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_AUGMENT_STREAM, epoch, index)))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded, label-mapped pair before any transform: (HxWx3 uint8, HxW uint8)."""
        sample = self.samples[index]
        image_name, mask_name = sample.image_file, sample.mask_file  # as the user knows them
        # The mask is drawn on the stored pixel grid, so EXIF rotation must not move the image off it.
        image = load_image(Path(sample.image_path), image_name, apply_exif=False)
        mask = load_mask(Path(sample.mask_path), mask_name)
        if image.shape[:2] != mask.shape:
            raise ClientError(
                f"{image_name} is {image.shape[1]}x{image.shape[0]} pixels but its annotation {mask_name} is "
                f"{mask.shape[1]}x{mask.shape[0]}; an image and its mask must have the same width and height"
            )
        if self.label_map is not None:
            mask = self.label_map.apply(mask)
        return image, mask

    def __getitem__(self, key: int | SampleKey) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        if isinstance(key, SampleKey):
            epoch, index = key
        else:
            epoch, index = self.epoch, int(key)
        image, mask = self.load(index)
        if self.mode == "train":
            data, label = train_transform(image, mask, self.crop_size, self.base_size, self.rng_for(epoch, index))
        elif self.mode == "val_crop":
            data, label = val_crop_transform(image, mask, self.crop_size)
        else:
            data, label = val_whole_transform(image, mask)
        return mx.nd.array(data, dtype=np.float32), mx.nd.array(label, dtype=np.float32)


class EpochSampler(mx.gluon.data.Sampler):
    """Yields `SampleKey(epoch, index)` for every index, shuffled per epoch when asked.

    Each pass takes the next epoch number (0, 1, 2, ... unless `set_epoch` says otherwise), so a trainer
    that iterates once per epoch gets a new order and new augmentation every epoch without doing anything;
    calling `set_epoch` explicitly keeps the numbering right after a resume.
    """

    def __init__(self, length: int, shuffle: bool, seed: int | None = None) -> None:
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.length)
        if self.seed is None:
            return np.random.default_rng().permutation(self.length)
        seq = np.random.SeedSequence(self.seed, spawn_key=(_SHUFFLE_STREAM, epoch))
        return np.random.default_rng(seq).permutation(self.length)

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.next_epoch
        self.next_epoch += 1
        return iter([SampleKey(epoch, int(i)) for i in self.order(epoch)])

    def __len__(self) -> int:
        return self.length


class SegmentationLoader(mx.gluon.data.DataLoader):
    """A Gluon DataLoader over an `EpochSampler`, with `set_epoch` for the trainer (call it before each pass)."""

    def __init__(self, dataset: SegmentationDataset, sampler: EpochSampler, **kwargs) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self._dataset.set_epoch(epoch)


def default_num_workers(cpus: int | None = None) -> int:
    """Worker processes for the machine: one core is left to the training loop, so cpus - 1, capped at 16.

    A single core gets 0 (load in the main process): a worker would only compete with the training loop.
    """
    cpus = available_cpus() if cpus is None else cpus
    if cpus <= 1:
        return 0
    return min(cpus - 1, MAX_AUTO_WORKERS)


def make_loader(
    dataset: SegmentationDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int | None = None,
    last_batch: str | None = None,
    seed: int | None = None,
    pin_memory: bool = False,
) -> SegmentationLoader:
    """A DataLoader for `dataset`.

    last_batch: 'rollover' for training and 'keep' for validation when None (Gluon's 'keep', 'discard',
    'rollover' otherwise). seed: the shuffle seed (defaults to the dataset's). num_workers: None sizes it to
    the machine (`default_num_workers`). 'val_whole' datasets need batch_size 1, because their images differ
    in size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if dataset.mode == "val_whole" and batch_size != 1:
        raise ValueError(f"'val_whole' images differ in size, so batch_size must be 1, got {batch_size}")
    if last_batch is None:
        last_batch = "rollover" if dataset.mode == "train" else "keep"
    if num_workers is None:
        num_workers = default_num_workers()
    if seed is None:
        seed = dataset.seed
    sampler = EpochSampler(len(dataset), shuffle, seed)
    return SegmentationLoader(
        dataset,
        sampler,
        batch_size=batch_size,
        last_batch=last_batch,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
