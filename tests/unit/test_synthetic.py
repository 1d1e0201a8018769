"""The generated dataset: deterministic, in the SageMaker channel layout, VOC-like masks, every class present."""

from __future__ import annotations

import colorsys
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gluonseg.data.synthetic import make_dataset, make_masks_only
from gluonseg.errors import ClientError
from gluonseg.palette import VOC_CLASSES, class_names, voc_palette

CLASSES = 4
TRAIN = 9
VALIDATION = 4
SIZE = 96


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    summary = make_dataset(out, classes=CLASSES, train=TRAIN, validation=VALIDATION, size=SIZE, seed=3)
    return out, summary


def _pairs(out: Path, split: str) -> list[tuple[np.ndarray, Image.Image]]:
    pictures = sorted((out / split).iterdir())
    return [(np.asarray(Image.open(p)), Image.open(out / f"{split}_annotation" / f"{p.stem}.png")) for p in pictures]


def test_palette_follows_the_voc_rule() -> None:
    palette = voc_palette()
    assert len(palette) == 768 and all(0 <= v <= 255 for v in palette)
    colours = [tuple(palette[3 * i : 3 * i + 3]) for i in range(256)]
    # Well-known VOC colours: background black, aeroplane dark red, person, tvmonitor, and the ignore colour.
    assert colours[0] == (0, 0, 0)
    assert colours[1] == (128, 0, 0)
    assert colours[15] == (192, 128, 128)
    assert colours[20] == (0, 64, 128)
    assert colours[255] == (224, 224, 192)
    assert len(set(colours)) == 256  # the rule is a bijection on 8 bits


def test_class_names() -> None:
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"
    assert class_names(3) == ["background", "aeroplane", "bicycle"]
    assert class_names(21) == list(VOC_CLASSES)
    names = class_names(23)
    assert names[:21] == list(VOC_CLASSES) and names[21:] == ["class_21", "class_22"]


def test_same_arguments_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    args = {"classes": 3, "train": 3, "validation": 2, "size": 64}
    make_dataset(tmp_path / "a", seed=7, **args)
    make_dataset(tmp_path / "b", seed=7, **args)
    make_dataset(tmp_path / "c", seed=8, **args)
    a, b, c = (_digests(tmp_path / name) for name in "abc")
    assert a == b
    assert set(a) == set(c)
    pictures = [name for name in a if name.endswith((".jpg", ".png"))]
    assert len(pictures) == 10
    assert all(a[name] != c[name] for name in pictures)


def test_channel_layout(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    assert summary["train"] == TRAIN and summary["validation"] == VALIDATION and summary["classes"] == CLASSES
    for split, count in (("train", TRAIN), ("validation", VALIDATION)):
        pictures = sorted(p.name for p in (out / split).iterdir())
        masks = sorted(p.name for p in (out / f"{split}_annotation").iterdir())
        assert len(pictures) == count and all(name.endswith(".jpg") for name in pictures)
        assert [n[:-4] for n in pictures] == [n[:-4] for n in masks] and all(n.endswith(".png") for n in masks)
        assert Path(summary["channels"][split]) == out / split
    train_names = {p.stem for p in (out / "train").iterdir()}
    assert not train_names & {p.stem for p in (out / "validation").iterdir()}
    for split in ("train", "validation"):
        assert json.loads((out / "label_map" / f"{split}_label_map.json").read_text()) == {"scale": 1}
    assert json.loads((out / "classes.json").read_text()) == class_names(CLASSES)
    assert {p.name for p in out.iterdir()} == {
        "train",
        "train_annotation",
        "validation",
        "validation_annotation",
        "label_map",
        "classes.json",
    }


def test_masks_are_voc_like(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    allowed = set(range(CLASSES)) | {255}
    for split in ("train", "validation"):
        for picture, mask_image in _pairs(out, split):
            assert mask_image.mode == "P"
            assert mask_image.getpalette() == voc_palette()
            mask = np.asarray(mask_image)
            assert picture.shape == (*mask.shape, 3) and picture.dtype == np.uint8
            assert set(np.unique(mask).tolist()) <= allowed
            assert (mask == 0).any() and (mask == 255).any() and ((mask > 0) & (mask < 255)).any()
            # Borders: two different classes never touch directly; a 255 band always separates them.
            for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:, :], mask[:-1, :])):
                touching = (a != b) & (a != 255) & (b != 255)
                assert not touching.any()


def test_sizes_vary_and_are_not_square(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    sizes = [Image.open(p).size for p in sorted((out / "train").iterdir()) + sorted((out / "validation").iterdir())]
    assert len(set(sizes)) > len(sizes) // 2
    for width, height in sizes:
        assert width != height
        assert 0.75 * SIZE - 1 <= width <= 1.25 * SIZE + 1 and 0.75 * SIZE - 1 <= height <= 1.25 * SIZE + 1


def test_every_class_in_training_set_even_when_train_is_minimal(tmp_path: Path) -> None:
    # Many classes, one picture each: random shapes alone would almost surely miss some classes.
    classes = 40
    make_dataset(tmp_path, classes=classes, train=classes - 1, validation=0, size=48, seed=11)
    seen: set[int] = set()
    for path in (tmp_path / "train_annotation").iterdir():
        seen |= set(np.unique(np.asarray(Image.open(path))).tolist())
    assert set(range(classes)) <= seen


def _hue_features(picture: np.ndarray, mask: np.ndarray, cls: int) -> tuple[float, float] | None:
    region = picture[mask == cls].astype(np.float64) / 255.0
    if len(region) < 30:
        return None
    r, g, b = region.mean(axis=0)
    h, s, _ = colorsys.rgb_to_hsv(r, g, b)
    return s * np.cos(2 * np.pi * h), s * np.sin(2 * np.pi * h)


def test_classes_are_told_apart_by_appearance_not_by_one_colour(dataset: tuple[Path, dict]) -> None:
    """A nearest-centroid rule on region colour learned from train classifies validation regions;
    yet no class is painted in a single exact colour."""
    out, _ = dataset
    centroids: dict[int, list] = {}
    for picture, mask_image in _pairs(out, "train"):
        mask = np.asarray(mask_image)
        for cls in range(1, CLASSES):
            values = picture[mask == cls]
            if len(values):
                # Many distinct colours and real spread: appearance, not a lookup of one RGB triple.
                assert len(np.unique(values.reshape(-1, 3), axis=0)) > min(20, len(values) // 2)
                assert values.std(axis=0).max() > 4.0
            feature = _hue_features(picture, mask, cls)
            if feature is not None:
                centroids.setdefault(cls, []).append(feature)
    assert set(centroids) == set(range(1, CLASSES))
    centre = {cls: np.mean(features, axis=0) for cls, features in centroids.items()}
    right = total = 0
    for picture, mask_image in _pairs(out, "validation"):
        mask = np.asarray(mask_image)
        for cls in range(1, CLASSES):
            feature = _hue_features(picture, mask, cls)
            if feature is None:
                continue
            guess = min(centre, key=lambda c: float(np.linalg.norm(centre[c] - np.asarray(feature))))
            right += guess == cls
            total += 1
    assert total >= 3
    assert right / total >= 0.75


def test_masks_only_match_the_training_masks(tmp_path: Path, dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    paths = make_masks_only(tmp_path / "masks", count=5, size=SIZE, classes=CLASSES, seed=3)
    assert [p.name for p in paths] == sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert len(paths) == 5
    for path in paths:
        assert path.read_bytes() == (out / "train_annotation" / path.name).read_bytes()


def test_rerun_in_place_is_fine_but_stale_files_are_refused(tmp_path: Path) -> None:
    args = {"classes": 3, "train": 4, "validation": 1, "size": 48, "seed": 1}
    make_dataset(tmp_path, **args)
    before = _digests(tmp_path)
    make_dataset(tmp_path, **args)
    assert _digests(tmp_path) == before
    with pytest.raises(ClientError, match="img_00004.jpg"):
        make_dataset(tmp_path, **{**args, "train": 2})


@pytest.mark.parametrize(
    "override, field",
    [
        ({"classes": 1}, "classes"),
        ({"classes": 256}, "classes"),
        ({"train": 2}, "train"),
        ({"validation": -1}, "validation"),
        ({"size": 8}, "size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_client_errors(tmp_path: Path, override: dict, field: str) -> None:
    args = {"classes": 4, "train": 5, "validation": 1, "size": 48, "seed": 0, **override}
    with pytest.raises(ClientError, match=field):
        make_dataset(tmp_path, **args)
    assert not any(tmp_path.iterdir())


# -- rare classes (make-dataset --rare)

DISC_5 = np.add.outer(np.arange(-2, 3) ** 2, np.arange(-2, 3) ** 2) <= 4


def test_rare_classes_are_present_small_but_not_sub_stride_unbanded_and_under_one_percent(tmp_path: Path) -> None:
    out = tmp_path / "rare"
    summary = make_dataset(out, classes=5, train=24, validation=4, size=128, seed=1, rare=2)
    assert summary["rare_classes"] == [3, 4]
    counts = np.zeros(256, dtype=np.int64)
    near_ignore = 0
    for path in sorted((out / "train_annotation").iterdir()):
        mask = np.asarray(Image.open(path))
        counts += np.bincount(mask.ravel(), minlength=256)
        rare = np.isin(mask, [3, 4])
        # no 255 band along a rare object: none of its pixels' 4-neighbours is ignore, unless a shape's band
        padded = np.pad(mask == 255, 1)
        touching = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        near_ignore += int((rare & touching).sum())
        # Small, yet about 5 pixels thick or more in every picture that holds them (strokes ~8, blobs ~16 px at
        # size 128), so the output stride of 8 can resolve them: some disc of radius 2 is all that class.
        for c in (3, 4):
            if (mask == c).any():
                windows = np.lib.stride_tricks.sliding_window_view(mask == c, (5, 5))
                assert (windows | ~DISC_5).all(axis=(2, 3)).any(), (path.name, c)
                assert (mask == c).sum() < 0.05 * mask.size, (path.name, c)
    labelled = counts[:5].sum()
    shares = counts[:5] / labelled
    np.testing.assert_allclose(summary["pixel_share"], shares)
    assert all(0 < shares[c] < 0.01 for c in (3, 4)), shares
    assert all(shares[c] > 0.05 for c in (0, 1, 2)), shares
    assert near_ignore < 0.1 * counts[[3, 4]].sum()
    # every picture holds a rare class (picture i: class 3 + i mod 2)
    for path in sorted((out / "train_annotation").iterdir())[:4]:
        assert np.isin(np.asarray(Image.open(path)), [3, 4]).any()
    masks_only = make_masks_only(tmp_path / "m", 3, size=128, classes=5, seed=1, rare=2)
    for path in masks_only:
        assert path.read_bytes() == (out / "train_annotation" / path.name).read_bytes()


def test_rare_must_leave_a_common_shape_class(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="rare must be between 0 and classes - 2 = 3"):
        make_dataset(tmp_path / "x", classes=5, train=8, validation=2, size=64, rare=4)
