"""Training and validation transforms: shapes, flip/crop alignment, padding, rescale range, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from gluonseg.data.transforms import (
    MEAN,
    STD,
    normalize,
    random_long_side,
    rescale_long_side,
    train_transform,
    val_crop_transform,
    val_whole_transform,
)

# 12 well separated colours, one per block of the grid image below.
PALETTE = np.array(
    [
        [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0],
        [255, 0, 255], [0, 255, 255], [128, 0, 0], [0, 128, 0],
        [0, 0, 128], [255, 255, 255], [0, 0, 0], [128, 128, 128],
    ],
    dtype=np.uint8,
)  # fmt: skip


def grid_pair(width: int = 160, height: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric grid: 3 rows x 4 columns of unequal sizes; each block's colour encodes its class."""
    col_edges = np.array([0, 0.1, 0.35, 0.75, 1.0]) * width
    row_edges = np.array([0, 0.2, 0.6, 1.0]) * height
    cols = np.searchsorted(col_edges[1:-1], np.arange(width), side="right")
    rows = np.searchsorted(row_edges[1:-1], np.arange(height), side="right")
    mask = (rows[:, None] * 4 + cols[None, :]).astype(np.uint8)
    return PALETTE[mask], mask


def denormalize(chw: np.ndarray) -> np.ndarray:
    """Back to HxWx3 on the 0..255 scale."""
    return (chw.transpose(1, 2, 0) * STD + MEAN) * 255.0


def nearest_class(hwc: np.ndarray) -> np.ndarray:
    dist = ((hwc[:, :, None, :] - PALETTE[None, None].astype(np.float32)) ** 2).sum(-1)
    return dist.argmin(-1)


def test_normalize_values_and_layout():
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[0, 0] = [255, 255, 255]
    img[1, 2] = [10, 20, 30]
    out = normalize(img)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out[:, 0, 1], -MEAN / STD, rtol=1e-5)
    np.testing.assert_allclose(out[:, 0, 0], (1 - MEAN) / STD, rtol=1e-5)
    np.testing.assert_allclose(out[:, 1, 2], (np.array([10, 20, 30]) / 255.0 - MEAN) / STD, rtol=1e-5)


@pytest.mark.parametrize("size", [(30, 20), (20, 30), (200, 150), (64, 64), (1, 300)])
def test_train_output_shapes_and_dtypes(size):
    w, h = size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (h, w), dtype=np.uint8)
    for seed in range(5):
        data, label = train_transform(image, mask, 48, 64, np.random.default_rng(seed))
        assert data.shape == (3, 48, 48) and data.dtype == np.float32
        assert label.shape == (48, 48) and label.dtype == np.float32
        assert np.isfinite(data).all()


def test_train_image_and_mask_stay_aligned_through_flip_rescale_crop():
    image, mask = grid_pair()
    for seed in range(20):
        data, label = train_transform(image, mask, 64, 120, np.random.default_rng(seed), blur_prob=0.0)
        valid = label != 255
        assert valid.sum() > 0
        decoded = nearest_class(denormalize(data))
        agreement = (decoded[valid] == label[valid]).mean()
        # Only pixels on block borders may blend colours under bilinear resizing.
        assert agreement > 0.9, (seed, agreement)


def test_train_alignment_survives_blur():
    image, mask = grid_pair()
    for seed in range(10):
        data, label = train_transform(image, mask, 64, 120, np.random.default_rng(seed), blur_prob=1.0)
        valid = label != 255
        assert (nearest_class(denormalize(data))[valid] == label[valid]).mean() > 0.85


def test_flip_mirrors_image_and_mask_together():
    # The draws are the same whatever the probabilities, so "flip on" must equal "flip off" applied to the
    # mirrored pair: the flip hits image and mask together, before the rescale and crop.
    image, mask = grid_pair(90, 60)
    for seed in range(6):
        flipped = train_transform(image, mask, 32, 60, np.random.default_rng(seed), flip_prob=1.0, blur_prob=0.0)
        mirrored = train_transform(
            image[:, ::-1], mask[:, ::-1], 32, 60, np.random.default_rng(seed), flip_prob=0.0, blur_prob=0.0
        )
        plain = train_transform(image, mask, 32, 60, np.random.default_rng(seed), flip_prob=0.0, blur_prob=0.0)
        np.testing.assert_array_equal(flipped[0], mirrored[0])
        np.testing.assert_array_equal(flipped[1], mirrored[1])
        assert not np.array_equal(flipped[1], plain[1])  # the grid is asymmetric, so the flip is visible


def test_padding_is_zero_image_and_ignore_mask_at_right_and_bottom():
    rng = np.random.default_rng(1)
    image = rng.integers(1, 256, (30, 40, 3), dtype=np.uint8)
    mask = np.ones((30, 40), dtype=np.uint8)
    for seed in range(10):
        data, label = train_transform(image, mask, 80, 40, np.random.default_rng(seed), blur_prob=0.0)
        content = label != 255
        oh, ow = content.sum(axis=0).max(), content.sum(axis=1).max()
        # Content is a top-left rectangle; everything else is padding.
        assert content[:oh, :ow].all() and not content[oh:, :].any() and not content[:, ow:].any()
        assert oh < 80 and ow < 80
        np.testing.assert_array_equal(label[content], 1)
        pad = ~content
        expected = (-MEAN / STD)[:, None]
        np.testing.assert_allclose(data[:, pad], np.broadcast_to(expected, (3, pad.sum())), rtol=1e-5)


def test_random_long_side_covers_inclusive_range():
    rng = np.random.default_rng(3)
    draws = [random_long_side(25, rng) for _ in range(3000)]
    assert min(draws) == 12 and max(draws) == 50  # int(0.5 * 25), int(2.0 * 25), both reachable
    assert len(set(draws)) == 50 - 12 + 1


@pytest.mark.parametrize("wide", [True, False])
def test_train_rescale_range_seen_through_padding(wide):
    # Base 40 on a 2:1 image: long side in [20, 80], never above the 100 crop, so the unpadded region of the
    # output is exactly the rescaled image.
    h, w = (50, 100) if wide else (100, 50)
    image = np.full((h, w, 3), 100, dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    longs = []
    for seed in range(300):
        _, label = train_transform(image, mask, 100, 40, np.random.default_rng(seed), blur_prob=0.0)
        content = label != 255
        oh, ow = int(content.sum(axis=0).max()), int(content.sum(axis=1).max())
        long_side, short_side = (ow, oh) if wide else (oh, ow)
        assert 20 <= long_side <= 80
        assert short_side == int(long_side / 2 + 0.5)  # aspect kept, rounded half up
        longs.append(long_side)
    assert min(longs) <= 22 and max(longs) >= 78
    assert 40 < np.mean(longs) < 60  # uniform over [20, 80]: mean 50


def test_rescale_long_side_keeps_aspect():
    image = np.zeros((30, 60, 3), dtype=np.uint8)
    mask = np.zeros((30, 60), dtype=np.uint8)
    img, msk = rescale_long_side(image, mask, 121)
    assert img.shape == (61, 121, 3) and msk.shape == (61, 121)  # 30 * 121 / 60 = 60.5 -> 61
    img, msk = rescale_long_side(image.transpose(1, 0, 2), mask.T, 20)
    assert img.shape == (20, 10, 3) and msk.shape == (20, 10)


def test_train_is_deterministic_for_a_seed_and_varies_across_seeds():
    image, mask = grid_pair()
    a = train_transform(image, mask, 64, 120, np.random.default_rng(42))
    b = train_transform(image, mask, 64, 120, np.random.default_rng(42))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    others = [train_transform(image, mask, 64, 120, np.random.default_rng(s)) for s in range(5)]
    assert any(not np.array_equal(a[0], o[0]) for o in others)


def test_blur_changes_the_image_but_not_the_mask():
    image, mask = grid_pair()
    sharp = train_transform(image, mask, 64, 120, np.random.default_rng(5), blur_prob=0.0)
    blurred = train_transform(image, mask, 64, 120, np.random.default_rng(5), blur_prob=1.0)
    np.testing.assert_array_equal(sharp[1], blurred[1])
    assert not np.allclose(sharp[0], blurred[0])


def test_mask_values_stay_in_the_original_set():
    rng = np.random.default_rng(7)
    values = np.array([0, 3, 7, 200], dtype=np.uint8)
    mask = values[rng.integers(0, 4, (45, 70))]
    image = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    allowed = {0, 3, 7, 200, 255}
    for seed in range(20):
        _, label = train_transform(image, mask, 40, 60, np.random.default_rng(seed))
        assert set(np.unique(label).tolist()) <= allowed
    for crop in (16, 45, 90):  # downscale, same size, upscale
        _, label = val_crop_transform(image, mask, crop)
        assert set(np.unique(label).tolist()) <= {0, 3, 7, 200}


def test_val_crop_takes_the_centre_without_resizing():
    # Short side already equals the crop: no resize; centre offset (20 - 10) / 2 = 5.
    w, h = 20, 10
    mask = np.tile(np.arange(w, dtype=np.uint8), (h, 1))
    image = np.stack([mask * 10, mask, np.zeros_like(mask)], axis=-1).astype(np.uint8)
    data, label = val_crop_transform(image, mask, 10)
    assert data.shape == (3, 10, 10) and label.shape == (10, 10)
    np.testing.assert_array_equal(label, np.tile(np.arange(5, 15), (10, 1)))
    np.testing.assert_allclose(denormalize(data)[..., 0], label * 10, atol=1e-3)


def test_val_crop_tall_image_takes_the_vertical_centre():
    h, w = 30, 10
    mask = np.tile(np.arange(h, dtype=np.uint8)[:, None], (1, w))
    image = np.repeat(mask[:, :, None], 3, axis=2)
    _, label = val_crop_transform(image, mask, 10)
    np.testing.assert_array_equal(label, np.tile(np.arange(10, 20)[:, None], (1, 10)))


def test_val_crop_resizes_short_side_then_centres():
    # 40x20 -> 20x10 (half), then the centre 10 columns: source columns about 10..29.
    w, h = 40, 20
    mask = np.tile(np.arange(w, dtype=np.uint8), (h, 1))
    image = np.repeat(mask[:, :, None], 3, axis=2)
    data, label = val_crop_transform(image, mask, 10)
    assert data.shape == (3, 10, 10)
    row = label[0]
    assert (np.diff(row) > 0).all()
    assert 9 <= row[0] <= 11 and 28 <= row[-1] <= 30
    assert (label == row).all()


def test_val_whole_keeps_size_and_mask():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (37, 53), dtype=np.uint8)
    data, label = val_whole_transform(image, mask)
    assert data.shape == (3, 37, 53) and label.dtype == np.float32
    np.testing.assert_array_equal(label, mask)
    np.testing.assert_allclose(data, normalize(image))


def test_mismatched_pair_is_refused():
    image = np.zeros((10, 12, 3), dtype=np.uint8)
    mask = np.zeros((12, 10), dtype=np.uint8)
    with pytest.raises(ValueError, match="differ in size"):
        train_transform(image, mask, 8, 16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="differ in size"):
        val_crop_transform(image, mask, 8)
