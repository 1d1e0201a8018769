"""`gluonseg evaluate` and `gluonseg predict`, run as real commands on the session's trained model."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gluonseg.data.channels import pair_channel
from gluonseg.data.images import load_image, load_mask
from gluonseg.data.label_map import parse_label_map
from gluonseg.evaluate import evaluate_folder
from gluonseg.inference.loading import load_predictor
from gluonseg.inference.predictor import Predictor
from gluonseg.inference.tta import TTA
from gluonseg.metrics import ConfusionMatrix
from gluonseg.palette import voc_palette
from gluonseg.plots import plot_confusion_matrix
from gluonseg.progress import with_progress
from gluonseg.visualize import blend, overlay
from tests.support.e2e_jobs import REPO
from tests.support.helpers import write_image

GLUONSEG = str(Path(sys.executable).parent / "gluonseg")


def gluonseg(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GLUONSEG, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )


@pytest.fixture(scope="module")
def predictor(trained_model_dir):
    return load_predictor(trained_model_dir)


@pytest.fixture(scope="module")
def validation(generated_dataset):
    return generated_dataset / "validation", generated_dataset / "validation_annotation"


def reference_matrix(predictor: Predictor, images: Path, masks: Path, lut: np.ndarray | None = None) -> ConfusionMatrix:
    """The expected scores, computed here the plain way: stored pixel grid, whole-image prediction."""
    cm = ConfusionMatrix(predictor.num_classes)
    for sample in pair_channel(images, masks):
        image = load_image(sample.image_path, "image", apply_exif=False)
        label = load_mask(sample.mask_path, "mask")
        cm.update(predictor.predict_mask(image), label if lut is None else lut[label])
    return cm


def check_report(report: dict, expected: ConfusionMatrix, class_names: list[str], images: int) -> None:
    assert report["images"] == images
    assert report["pixel_accuracy"] == pytest.approx(expected.pixel_accuracy(), abs=1e-9)
    assert report["mIOU"] == pytest.approx(expected.mean_iou(), abs=1e-9)
    assert np.array_equal(np.asarray(report["confusion_matrix"]), expected.matrix)
    assert list(report["iou_per_class"]) == class_names
    for value, want in zip(report["iou_per_class"].values(), expected.iou_per_class()):
        assert (value is None) if np.isnan(want) else value == pytest.approx(want, abs=1e-9)


# -- evaluate


def test_evaluate_writes_the_scores_of_the_predictor(tmp_path, trained_model_dir, validation, predictor):
    images, masks = validation
    out = tmp_path / "eval"
    proc = gluonseg("evaluate", "--model-dir", trained_model_dir, "--images", images, "--masks", masks, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]

    expected = reference_matrix(predictor, images, masks)
    assert expected.labelled_pixels > 0
    report = json.loads((out / "report.json").read_text())
    check_report(report, expected, predictor.class_names, len(pair_channel(images, masks)))
    assert report["model_dir"] == str(trained_model_dir)
    assert report["seconds"] > 0

    # the terminal table names every class and shows the overall scores
    for name in predictor.class_names:
        assert name in proc.stdout
    assert f"{expected.mean_iou():.4f}" in proc.stdout
    assert f"{expected.pixel_accuracy():.4f}" in proc.stdout
    # not a TTY: progress comes as log lines, the last one at 100%
    assert "100%" in proc.stdout

    with Image.open(out / "confusion_matrix.png") as plot:
        plot.load()
        assert plot.format == "PNG"
        assert 200 <= plot.width <= 2500 and 200 <= plot.height <= 2500


def test_evaluate_with_an_identity_label_map_gives_the_same_numbers(tmp_path, trained_model_dir, validation, predictor):
    images, masks = validation
    label_map = tmp_path / "label_map.json"
    label_map.write_text(json.dumps({"scale": 1}))
    out = tmp_path / "eval"
    proc = gluonseg(
        "evaluate", "--model-dir", trained_model_dir, "--images", images, "--masks", masks,
        "--label-map", label_map, "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    check_report(report, reference_matrix(predictor, images, masks), predictor.class_names, 4)


def test_evaluate_applies_a_label_map(trained_model_dir, validation, predictor, tmp_path):
    """A map without class 3's pixel value turns those pixels into ignore: row 3 of the matrix empties."""
    images, masks = validation
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"map": {"0": 0, "1": 1, "2": 2}}))
    report = evaluate_folder(trained_model_dir, images, masks, label_map_file=label_map, progress=False)
    lut = parse_label_map({"map": {"0": 0, "1": 1, "2": 2}}, "test").lut
    expected = reference_matrix(predictor, images, masks, lut)
    check_report(report, expected, predictor.class_names, 4)
    assert expected.matrix[3].sum() == 0
    assert reference_matrix(predictor, images, masks).matrix[3].sum() > 0  # the map did change something


def test_evaluate_refuses_a_mask_with_a_value_outside_the_classes(tmp_path, trained_model_dir, validation):
    images, masks = validation
    bad_masks = tmp_path / "masks"
    shutil.copytree(masks, bad_masks)
    victim = sorted(bad_masks.glob("*.png"))[1]
    values = np.asarray(Image.open(victim)).copy()
    values[0, 0] = 7  # 4 classes: 0..3 and 255 only
    Image.fromarray(values, mode="L").save(victim)
    out = tmp_path / "eval"
    proc = gluonseg(
        "evaluate", "--model-dir", trained_model_dir, "--images", images, "--masks", bad_masks, "--out", out
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "ClientError" in proc.stderr
    assert victim.stem in proc.stderr and "7" in proc.stderr
    assert not (out / "report.json").exists()


# -- predict


def test_predict_writes_masks_and_overlays_and_reports_bad_files(tmp_path, trained_model_dir, validation, predictor):
    images, _ = validation
    inputs = sorted(images.glob("*.jpg"))[:2]
    # larger than the 64-pixel validation pictures, so the legend fits in one quarter of it;
    # EXIF orientation 6: decoded turned, as the server does
    rotated = tmp_path / "in" / "rotated.jpg"
    write_image(rotated, width=300, height=200, seed=5)
    with Image.open(rotated) as img:
        exif = img.getexif()
        exif[0x0112] = 6
        img.save(rotated, exif=exif.tobytes())
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(b"this is not a picture")
    missing = tmp_path / "in" / "missing.png"
    out = tmp_path / "out"

    proc = gluonseg("predict", "--model-dir", trained_model_dir, *inputs, broken, rotated, missing, "--out", out)
    assert proc.returncode != 0
    assert "3 of 5" in proc.stdout
    assert "broken.jpg" in proc.stderr and "missing.png" in proc.stderr
    assert not (out / "broken_mask.png").exists() and not (out / "missing_overlay.png").exists()

    for source in [*inputs, rotated]:
        image = load_image(source, source.name)  # EXIF applied
        if source == rotated:
            assert image.shape[:2] == (300, 200)
        expected = predictor.predict_mask(image)
        with Image.open(out / f"{source.stem}_mask.png") as mask_png:
            assert mask_png.mode == "P"
            assert mask_png.size == (image.shape[1], image.shape[0])
            assert np.array_equal(np.asarray(mask_png), expected)
            assert mask_png.getpalette()[: 3 * 4] == voc_palette()[: 3 * 4]
        with Image.open(out / f"{source.stem}_overlay.png") as overlay_png:
            assert overlay_png.mode == "RGB"
            assert overlay_png.size == (image.shape[1], image.shape[0])
            drawn = np.asarray(overlay_png)
        # The overlay is the plain blend except for the legend, a box anchored in the top-left corner.
        plain = blend(image, expected, predictor.palette, 0.5)
        ys, xs = np.nonzero(np.any(drawn != plain, axis=2))
        assert ys.size > 0 and ys.min() == 0 and xs.min() == 0
        if source == rotated:
            assert ys.max() < 150 and xs.max() < 100  # within the top-left quarter


def test_predict_and_transform_take_the_scale_flag(tmp_path, trained_model_dir, validation):
    from gluonseg.codecs.decode import decode_probabilities

    images, _ = validation
    source = tmp_path / "in" / "wide.jpg"
    write_image(source, width=150, height=90, seed=9)
    image = load_image(source, source.name)
    crop = load_predictor(trained_model_dir, scale="crop").predict(image, want_probabilities=True)
    native = load_predictor(trained_model_dir).predict(image, want_probabilities=True)
    assert np.abs(crop.probabilities - native.probabilities).max() > 1e-3  # the two scales are told apart

    out = tmp_path / "predicted"
    proc = gluonseg("predict", "--model-dir", trained_model_dir, source, "--out", out, "--scale", "crop")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fp32, crop scale)" in proc.stdout + proc.stderr
    with Image.open(out / "wide_mask.png") as mask_png:
        assert np.array_equal(np.asarray(mask_png), crop.mask)

    for scale, expected in (("crop", crop), ("native", native)):
        transformed = tmp_path / f"transformed-{scale}"
        proc = gluonseg(
            "transform", "--model-dir", trained_model_dir, "--input", source.parent, "--output", transformed,
            "--accept", "application/x-protobuf", "--scale", scale, "--backend", "mxnet",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = decode_probabilities((transformed / "wide.jpg.out").read_bytes())
        np.testing.assert_allclose(got.reshape(expected.probabilities.shape), expected.probabilities, atol=1e-5)

    proc = gluonseg("evaluate", "--model-dir", trained_model_dir, "--images", images, "--masks", images, "--scale", "x")
    assert proc.returncode == 2 and "invalid choice: 'x'" in proc.stderr


# -- the pieces, in process


def test_overlay_blends_classes_keeps_background_and_draws_a_legend():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    mask = np.zeros((120, 160), dtype=np.uint8)
    mask[60:, 80:] = 2
    mask[60:, :40] = 1
    palette = voc_palette()
    plain = np.asarray(overlay(image, mask, palette, ["background", "sky", "road"], alpha=0.5, legend=False))
    assert np.array_equal(plain[mask == 0], image[mask == 0])  # background untouched
    colour = np.array(palette[6:9], dtype=float)  # class 2
    want = np.floor(image[mask == 2] * 0.5 + colour * 0.5 + 0.5)
    assert np.abs(plain[mask == 2].astype(float) - want).max() == 0

    with_legend = np.asarray(overlay(image, mask, palette, ["background", "sky", "road"], alpha=0.5))
    assert with_legend.shape == image.shape
    changed = np.any(with_legend != plain, axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.size > 0 and ys.min() == 0 and xs.min() == 0  # a box in the top-left corner
    assert ys.max() < 60 and xs.max() < 80  # three entries fit in the corner, the rest is the blend
    # the swatches carry the class colours
    for c in (1, 2):
        col = np.array(palette[3 * c : 3 * c + 3], dtype=np.uint8)
        assert np.all(with_legend[changed] == col, axis=1).any()

    only_background = np.asarray(overlay(image, np.zeros_like(mask), palette, ["background"], legend=False))
    assert np.array_equal(only_background, image)


def test_overlay_of_a_large_picture_blends_in_bands_without_picture_sized_float_copies(monkeypatch):
    import tracemalloc

    import gluonseg.visualize

    rng = np.random.default_rng(1)
    palette = voc_palette()
    image = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (300, 200), dtype=np.uint8)
    colours = np.array(palette[:12], dtype=np.float32).reshape(4, 3)
    mixed = np.floor(image.astype(np.float32) * (1.0 - 0.3) + colours[mask] * 0.3 + 0.5)  # float32, as documented
    want = np.where((mask != 0)[..., None], mixed, image)
    monkeypatch.setattr(gluonseg.visualize, "BAND_PIXELS", 1000)  # 5 rows a band: many band edges
    assert np.array_equal(blend(image, mask, palette, alpha=0.3), want)
    target = image.copy()
    assert blend(target, mask, palette, alpha=0.3, out=target) is target and np.array_equal(target, want)
    monkeypatch.undo()

    # 24 MP: the old whole-picture float32 blend took about 12x the picture's bytes on top of it
    big = np.ascontiguousarray(np.broadcast_to(image[:1, :1], (4000, 6000, 3)))
    big_mask = np.ones((4000, 6000), dtype=np.uint8)
    big_mask[:, :3000] = 0
    tracemalloc.start()
    try:
        picture = overlay(big, big_mask, palette, ["background", "aeroplane"], in_place=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < big.nbytes / 2, peak
    assert picture.size == (6000, 4000)
    blended = np.floor(image[0, 0] * 0.5 + np.array(palette[3:6]) * 0.5 + 0.5).astype(np.uint8)
    assert np.array_equal(big[-1, -1], blended) and np.array_equal(big[-1, 0], image[0, 0])  # blended in place
    assert np.array_equal(np.asarray(picture)[-1, -1], blended)

    tiny = overlay(image[:6, :6], mask[:6, :6] * 0 + 1, palette, ["background", "aeroplane"])
    assert tiny.size == (6, 6)  # the legend box is clipped to a picture smaller than it


def test_confusion_matrix_plot_survives_an_empty_row(tmp_path):
    matrix = np.array([[50, 5, 0], [0, 0, 0], [3, 0, 9]])  # class 1 never labelled
    plot_confusion_matrix(matrix, ["background", "a", "b"], tmp_path / "cm.png")
    with Image.open(tmp_path / "cm.png") as img:
        img.load()
        assert img.width > 100 and img.height > 100
    with pytest.raises(ValueError):
        plot_confusion_matrix(matrix, ["only", "two"], tmp_path / "bad.png")


def test_progress_without_a_terminal_logs_about_every_tenth(caplog):
    with caplog.at_level(logging.INFO, logger="gluonseg.progress"):
        assert list(with_progress(range(25), 25, "evaluate", show_bar=False)) == list(range(25))
    lines = [r.getMessage() for r in caplog.records if r.name == "gluonseg.progress"]
    assert 9 <= len(lines) <= 13
    assert lines[-1].startswith("evaluate: 25/25 images (100%")


def test_evaluate_prints_the_scale_tta_and_time_per_picture(trained_model_dir, validation, tmp_path):
    images, masks = validation
    out = tmp_path / "slide-flip"
    proc = gluonseg(
        "evaluate", "--model-dir", trained_model_dir, "--images", images, "--masks", masks, "--out", out,
        "--scale", "slide", "--window", "64", "--tta", "flip",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "inference   slide (own size, window 64, stride 42), TTA flip, mxnet fp32" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["inference"].startswith("slide") and 0 < report["seconds_per_image"] < report["seconds"]
    assert f"time        {report['seconds_per_image']:.3f} s per picture" in proc.stdout


def test_predict_at_slide_scale_with_tta_and_bad_slide_flags_named(trained_model_dir, tmp_path):
    picture = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (90, 250, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / "out"
    flags = ["--scale", "slide", "--window", "64", "--stride", "40", "--tta", "flip,scales=0.75,1"]
    proc = gluonseg("predict", "--model-dir", trained_model_dir, picture, "--out", out, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = load_predictor(
        trained_model_dir, scale="slide", slide_window=64, slide_stride=40, tta=TTA(True, (0.75, 1.0))
    ).predict(load_image(picture, "picture"))
    assert np.array_equal(np.asarray(Image.open(out / "wide_mask.png")), expected.mask)
    for bad, named in (
        (["--window", "60"], "--window: the slide window must be a multiple of 8"),
        (["--window", "64", "--stride", "65"], "--stride (65) must not be larger than --window (64)"),
        (["--tta", "mirror"], "--tta must be flip, scales=S1,S2,... or flip,scales=S1,S2,...; got 'mirror'"),
        (["--max-probabilities-mb", "0"], "--max-probabilities-mb must be at least 1, got 0"),
    ):
        proc = gluonseg("predict", "--model-dir", trained_model_dir, picture, "--out", out, *bad)
        assert proc.returncode == 2 and named in proc.stderr, (bad, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("jobs", [1, 2])
def test_transform_shows_a_bar_over_each_pictures_windows_on_a_terminal(
    trained_model_dir, tmp_path, monkeypatch, capfd, jobs
):
    import gluonseg.progress
    from serve.batch import transform_folder

    monkeypatch.setattr(gluonseg.progress, "WINDOW_BAR_DELAY_S", 0.0)  # the tiny model's pictures take no time
    folder = tmp_path / "in"
    folder.mkdir()
    for name, seed in (("first.png", 1), ("second.png", 2)):
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (90, 250, 3), dtype=np.uint8)).save(folder / name)
    settings = dict(backend="mxnet", scale="slide", slide_window=64, slide_stride=40, tta=TTA(True, (0.75, 1.0)))
    reference = load_predictor(trained_model_dir, **settings)
    windows = sum(reference.windows_for(90, 250, scale) for scale, _ in reference.tta.views)
    assert windows > 4

    results = transform_folder(trained_model_dir, folder, tmp_path / "out", jobs=jobs, progress=True, **settings)
    assert [r.ok for r in results] == [True, True]
    err = capfd.readouterr().err
    for name in ("first.png", "second.png"):
        assert f"{name}:   0%|" in err and f"| 0/{windows} [" in err, err[-2000:]
    assert "transform: 100%" in err  # the files' bar above them
    expected = reference.predict(np.asarray(Image.open(folder / "first.png")))
    with Image.open(io.BytesIO((tmp_path / "out" / "first.png.out").read_bytes())) as mask:
        assert np.array_equal(np.asarray(mask), expected.mask)

    transform_folder(trained_model_dir, folder, tmp_path / "quiet", jobs=jobs, progress=False, **settings)
    assert "window" not in capfd.readouterr().err  # no terminal: the handler's log line per large picture instead
