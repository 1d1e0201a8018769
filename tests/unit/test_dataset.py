"""SegmentationDataset and make_loader: real files, worker processes, label maps, reproducibility."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gluonseg.data.dataset import (
    EpochSampler,
    Sample,
    SampleKey,
    SegmentationDataset,
    default_num_workers,
    make_loader,
)
from gluonseg.data.label_map import LabelMap, parse_label_map
from gluonseg.data.transforms import MEAN, STD
from gluonseg.errors import ClientError

SIZES = [(37, 23), (50, 64), (30, 30), (80, 40), (45, 60)]  # (width, height)
RAW_VALUES = np.array([0, 2, 4], dtype=np.uint8)  # classes 0, 1, 2 under {"scale": 2}
CROP, BASE = 32, 48
LOW, HIGH = float((-MEAN / STD).min()), float(((1 - MEAN) / STD).max())


def write_palette_mask(path: Path, values: np.ndarray) -> None:
    img = Image.frombytes("P", (values.shape[1], values.shape[0]), values.astype(np.uint8).tobytes())
    img.putpalette([v for c in range(256) for v in (c, (c * 5) % 256, 255 - c)])
    img.save(path, "PNG")


@pytest.fixture
def pairs(tmp_path) -> tuple[list[Sample], dict[str, np.ndarray]]:
    """Five JPEG/PNG pairs of different sizes; masks hold 0/2/4 with a 255 border (VOC style)."""
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    samples, masks = [], {}
    for i, (w, h) in enumerate(SIZES):
        rng = np.random.default_rng(i)
        name = f"s{i}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{name}.jpg")
        mask = RAW_VALUES[rng.integers(0, 3, (h, w))]
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 255
        write_palette_mask(tmp_path / "ann" / f"{name}.png", mask)
        masks[name] = mask
        samples.append(Sample(name, tmp_path / "img" / f"{name}.jpg", tmp_path / "ann" / f"{name}.png"))
    return samples, masks


def scale2() -> LabelMap:
    return parse_label_map({"scale": 2}, "train_label_map.json")


def collect(loader, epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out.extend((data.asnumpy(), label.asnumpy()) for data, label in loader)
    return out


def test_train_batches_identical_across_worker_counts(pairs):
    samples, _ = pairs
    runs = {}
    for workers in (0, 2):
        ds = SegmentationDataset(samples, scale2(), "train", CROP, BASE, seed=11)
        loader = make_loader(ds, batch_size=2, shuffle=True, num_workers=workers)
        runs[workers] = collect(loader, epochs=3)
        del loader
    assert len(runs[0]) == len(runs[2]) == 7  # rollover: 5 + 5 + 5 samples = 7 batches of 2, 1 left over
    for (d0, l0), (d2, l2) in zip(runs[0], runs[2]):
        np.testing.assert_array_equal(d0, d2)
        np.testing.assert_array_equal(l0, l2)
    for data, label in runs[2]:
        assert data.shape == (2, 3, CROP, CROP) and data.dtype == np.float32
        assert label.shape == (2, CROP, CROP) and label.dtype == np.float32
        assert LOW - 1e-4 <= data.min() and data.max() <= HIGH + 1e-4
        assert set(np.unique(label).tolist()) <= {0.0, 1.0, 2.0, 255.0}  # label map applied, no new values


def test_epochs_differ_and_replay(pairs):
    samples, _ = pairs
    ds = SegmentationDataset(samples, scale2(), "train", CROP, BASE, seed=3)
    loader = make_loader(ds, batch_size=5, shuffle=False, num_workers=0, last_batch="keep")
    first = collect(loader, 1)[0]
    second = next(iter(loader))  # the next pass is epoch 1 without being told
    assert not np.array_equal(first[0], second[0].asnumpy())
    loader.set_epoch(0)
    replay = next(iter(loader))
    np.testing.assert_array_equal(first[0], replay[0].asnumpy())
    np.testing.assert_array_equal(first[1], replay[1].asnumpy())


def test_same_seed_same_samples_other_seed_or_none_differs(pairs):
    samples, _ = pairs
    a = SegmentationDataset(samples, None, "train", CROP, BASE, seed=5)
    b = SegmentationDataset(samples, None, "train", CROP, BASE, seed=5)
    c = SegmentationDataset(samples, None, "train", CROP, BASE, seed=6)
    n = SegmentationDataset(samples, None, "train", CROP, BASE, seed=None)
    for i in range(len(samples)):
        np.testing.assert_array_equal(a[i][0].asnumpy(), b[i][0].asnumpy())
        np.testing.assert_array_equal(a[SampleKey(2, i)][1].asnumpy(), b[SampleKey(2, i)][1].asnumpy())
    assert any(not np.array_equal(a[i][0].asnumpy(), c[i][0].asnumpy()) for i in range(len(samples)))
    assert any(not np.array_equal(n[i][0].asnumpy(), n[i][0].asnumpy()) for i in range(len(samples)))


def test_val_whole_full_size_with_label_map(pairs):
    samples, masks = pairs
    ds = SegmentationDataset(samples, scale2(), "val_whole")
    loader = make_loader(ds, batch_size=1, shuffle=False, num_workers=2)
    batches = list(loader)
    del loader
    assert len(batches) == len(samples)
    for (data, label), sample, (w, h) in zip(batches, samples, SIZES):
        assert data.shape == (1, 3, h, w) and label.shape == (1, h, w)
        raw = masks[sample.name]
        expected = np.where(raw == 255, 255, raw // 2)
        np.testing.assert_array_equal(label.asnumpy()[0], expected)


def test_val_whole_refuses_batches_above_one(pairs):
    ds = SegmentationDataset(pairs[0], None, "val_whole")
    with pytest.raises(ValueError, match="batch_size must be 1"):
        make_loader(ds, batch_size=2, shuffle=False, num_workers=0)


def test_val_crop_keeps_the_last_partial_batch(pairs):
    samples, _ = pairs
    ds = SegmentationDataset(samples, None, "val_crop", CROP)
    batches = list(make_loader(ds, batch_size=2, shuffle=False, num_workers=0))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert all(b[0].shape[1:] == (3, CROP, CROP) and b[1].shape[1:] == (CROP, CROP) for b in batches)
    labels = np.concatenate([b[1].asnumpy() for b in batches])
    assert set(np.unique(labels).tolist()) <= {0.0, 2.0, 4.0, 255.0}  # no label map: raw values


def test_shuffle_order_is_seeded_per_epoch():
    a, b = EpochSampler(20, shuffle=True, seed=9), EpochSampler(20, shuffle=True, seed=9)
    a_epochs, b_epochs = [list(a) for _ in range(3)], [list(b) for _ in range(3)]
    assert a_epochs == b_epochs
    for epoch, keys in enumerate(a_epochs):
        assert all(k.epoch == epoch for k in keys)
        assert sorted(k.index for k in keys) == list(range(20))
    orders = [[k.index for k in keys] for keys in a_epochs]
    assert orders[0] != orders[1] != orders[2]
    assert [k.index for k in EpochSampler(20, shuffle=False)] == list(range(20))
    a.set_epoch(1)
    assert list(a) == a_epochs[1]


def test_dataset_pickles_for_worker_processes(pairs):
    ds = SegmentationDataset(pairs[0], scale2(), "train", CROP, BASE, seed=1)
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[SampleKey(4, 3)][0].asnumpy(), ds[SampleKey(4, 3)][0].asnumpy())


def test_broken_image_raises_client_error_through_workers(pairs, tmp_path):
    samples, _ = pairs
    (tmp_path / "img" / "s2.jpg").write_bytes(b"not a jpeg")
    ds = SegmentationDataset(samples, None, "val_crop", CROP)
    loader = make_loader(ds, batch_size=1, shuffle=False, num_workers=2)
    with pytest.raises(ClientError, match="s2.jpg"):
        list(loader)
    del loader


def test_size_mismatch_names_both_files(pairs, tmp_path):
    samples, _ = pairs
    write_palette_mask(tmp_path / "ann" / "s1.png", np.zeros((10, 10), dtype=np.uint8))
    ds = SegmentationDataset(samples, None, "val_whole")
    with pytest.raises(ClientError, match=r"s1\.jpg is 50x64 .*s1\.png is 10x10"):
        ds[1]


def test_exif_orientation_is_ignored_for_training_pairs(tmp_path):
    # A 40x20 image tagged "rotate 90" would become 20x40 if EXIF were applied, and no longer fit its mask.
    img = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif)
    write_palette_mask(tmp_path / "r.png", np.ones((20, 40), dtype=np.uint8))
    data, label = SegmentationDataset([Sample("r", tmp_path / "r.jpg", tmp_path / "r.png")], None, "val_whole")[0]
    assert data.shape == (3, 20, 40) and label.shape == (20, 40)


def test_default_num_workers():
    assert default_num_workers(1) == 0
    assert default_num_workers(2) == 1
    assert default_num_workers(8) == 7
    assert default_num_workers(96) == 16
    assert default_num_workers() >= 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        SegmentationDataset([], None, "test")
    with pytest.raises(ValueError, match="seed"):
        SegmentationDataset([], None, "train", seed=-1)
