"""The slide scale (windows over the picture at full resolution, bounded memory) and test-time augmentation."""

from __future__ import annotations

import tracemalloc

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gluonseg.data.transforms import normalize
from gluonseg.errors import ClientError, ProbabilitiesTooLarge
from gluonseg.inference import postprocess
from gluonseg.inference import predictor as predictor_module
from gluonseg.inference.geometry import resize_picture
from gluonseg.inference.loading import load_predictor
from gluonseg.inference.postprocess import logits_to_prediction, resize_bands, source_columns
from gluonseg.inference.predictor import Predictor
from gluonseg.inference.tta import TTA, parse_tta
from gluonseg.inference.windows import check_window, plan_windows, slide_size
from tests.support.models import image_of, softmax

# -- window geometry (numpy only)

SIZES = [(1, 1), (63, 200), (64, 64), (65, 64), (500, 130), (130, 1000), (999, 1000)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("window", "stride"), [(64, None), (96, None), (64, 64), (128, 17)])
def test_windows_cover_every_pixel_and_blend_weights_sum_to_one(size, window, stride):
    height, width = size
    plan = plan_windows(height, width, window, stride)
    total = np.zeros((height, width), np.float64)
    covered = np.zeros((height, width), np.int32)
    for y in plan.ys:
        for x in plan.xs:
            # Inside the picture, except where the picture is smaller than the window (then padded).
            assert (y == 0 or y + plan.win_h <= height) and (x == 0 or x + plan.win_w <= width)
            weight = np.outer(plan.weight_y, plan.weight_x)[: height - y, : width - x]
            assert (weight > 0).all()
            total[y : y + plan.win_h, x : x + plan.win_w] += weight
            covered[y : y + plan.win_h, x : x + plan.win_w] += 1
    assert (covered >= 1).all()
    # The blend's denominator is separable, and every pixel's normalised weights sum to 1.
    np.testing.assert_allclose(np.outer(plan.total_y, plan.total_x), total, rtol=1e-6)
    normalised = np.zeros_like(total)
    for y in plan.ys:
        for x in plan.xs:
            weight = np.outer(plan.weight_y, plan.weight_x)[: height - y, : width - x]
            normalised[y : y + plan.win_h, x : x + plan.win_w] += weight / total[y : y + plan.win_h, x : x + plan.win_w]
    np.testing.assert_allclose(normalised, 1.0, rtol=1e-6)
    # Window sides: the window, or the side padded as at native scale when the picture is smaller.
    for length, side, starts in ((height, plan.win_h, plan.ys), (width, plan.win_w, plan.xs)):
        assert side % 8 == 0 and 64 <= side <= window
        assert side == window or (len(starts) == 1 and side == max(64, -(-length // 8) * 8))
        steps = np.diff(starts)
        assert (steps >= 1).all() and (steps <= (stride or int(window * 2 / 3))).all()
        assert starts[-1] + side >= length


def test_window_weights_are_a_tent_towards_the_window_border():
    plan = plan_windows(90, 400, 96)
    weights = plan.weight_x
    assert weights[0] < weights[10] < weights[40] == 1.0
    np.testing.assert_array_equal(weights, weights[::-1])
    assert (plan.weight_y == 1.0).all()  # one window down the picture: no blending on that axis


@pytest.mark.parametrize(("window", "stride"), [(60, None), (32, None), (64, 0), (64, 65)])
def test_bad_windows_are_refused(window, stride):
    with pytest.raises(ValueError, match="slide (window|stride)"):
        check_window(window, stride)


def test_slide_size_keeps_the_aspect():
    assert slide_size(3000, 4000, None) == (3000, 4000)
    assert slide_size(3000, 4000, 1000) == (750, 1000)
    assert slide_size(4000, 30, 100) == (100, 1)


# -- streamed resize (postprocess)


@pytest.mark.parametrize(("src", "dst", "cuts"), [((37, 23), (101, 50), [1, 5, 30]), ((80, 40), (21, 9), [40])])
def test_logits_given_in_bands_resize_as_the_whole(src, dst, cuts, monkeypatch):
    monkeypatch.setattr(postprocess, "BAND_ELEMENTS", 3 * dst[1] * 4)  # 4 output rows per band
    logits = np.random.default_rng(3).normal(size=(3, *src)).astype(np.float32)
    whole = np.concatenate(list(resize_bands([logits], *src, *dst)), axis=1)
    pieces = np.split(logits, cuts, axis=1)
    streamed = list(resize_bands(pieces, *src, *dst))
    assert all(band.shape[1] == 4 for band in streamed[:-1])  # the same bands whatever came in
    np.testing.assert_array_equal(np.concatenate(streamed, axis=1), whole)


@pytest.mark.parametrize(("src", "dst"), [((37, 23), (101, 50)), ((80, 40), (21, 9)), ((30, 30), (30, 30))])
def test_a_column_strip_of_a_resize_is_those_columns_of_the_whole(src, dst):
    logits = np.random.default_rng(4).normal(size=(3, *src)).astype(np.float32)
    whole = np.concatenate(list(resize_bands([logits], *src, *dst)), axis=1)
    for first, end in [(0, dst[1]), (0, 1), (3, 7), (dst[1] - 2, dst[1])]:
        start, stop = source_columns(first, end, dst[1], src[1])
        strip = resize_bands(np.split(logits[:, :, start:stop], [5], axis=1), *src, *dst, (first, end))
        np.testing.assert_array_equal(np.concatenate(list(strip), axis=1), whole[:, :, first:end])


# -- slide scale on a real (pointwise) network: every window answers what the whole picture does


class Pointwise(gluon.HybridBlock):
    """A 1x1 convolution: its logits at a pixel depend on that pixel only, so any blend of windows whose
    weights sum to 1 gives back the whole picture's logits."""

    def __init__(self, classes: int):
        super().__init__()
        self.conv = gluon.nn.Conv2D(classes, 1, in_channels=3)

    def hybrid_forward(self, F, x):
        return self.conv(x)


def pointwise_predictor(classes: int = 5, **options) -> tuple[Predictor, np.ndarray, np.ndarray]:
    net = Pointwise(classes)
    net.initialize(mx.init.Normal(1.0))
    weight = net.conv.weight.data().asnumpy()[:, :, 0, 0]
    bias = net.conv.bias.data().asnumpy()
    return Predictor.from_network(net, num_classes=classes, crop_size=16, **options), weight, bias


def pointwise_logits(weight: np.ndarray, bias: np.ndarray, image: np.ndarray) -> np.ndarray:
    return np.einsum("kc,chw->khw", weight, normalize(image)) + bias[:, None, None]


def mask_and_peak_memory(predictor: Predictor, image: np.ndarray) -> tuple[np.ndarray, int]:
    """The mask, and the most memory numpy held at once while predicting it (tracemalloc)."""
    tracemalloc.start()
    try:
        mask = predictor.predict(image).mask
        return mask, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("size", [(1, 1), (50, 70), (64, 200), (150, 97), (301, 129)])
def test_slide_blends_windows_back_into_the_whole_picture(size, monkeypatch):
    monkeypatch.setattr(postprocess, "BAND_ELEMENTS", 5 * size[1] * 7)  # several bands per window row
    predictor, weight, bias = pointwise_predictor(scale="slide", slide_window=64)
    image = image_of(*size, seed=size[0])
    calls = []
    result = predictor.predict(image, want_probabilities=True, progress=lambda done, total: calls.append(total))
    expected = softmax(pointwise_logits(weight, bias, image))
    assert result.mask.shape == size and result.probabilities.shape == (5, *size)
    np.testing.assert_allclose(result.probabilities, expected, atol=2e-5)
    assert np.array_equal(result.mask, result.probabilities.argmax(axis=0))
    assert result.windows == predictor.window_plan(*size).count == calls[-1]


def test_slide_long_side_runs_at_that_resolution_and_answers_at_the_input_size():
    predictor, weight, bias = pointwise_predictor(scale="slide", slide_window=64, slide_long_side=120)
    image = image_of(150, 300, seed=5)
    result = predictor.predict(image, want_probabilities=True)
    working = resize_picture(image, 60, 120)
    expected = logits_to_prediction(pointwise_logits(weight, bias, working), 150, 300, True)
    assert result.mask.shape == (150, 300)
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=2e-5)
    assert result.windows == plan_windows(60, 120, 64).count


def test_slide_memory_is_bounded_by_a_row_of_windows_not_the_picture(monkeypatch):
    classes, height, width, window = 21, 3000, 2000, 128
    predictor, _, _ = pointwise_predictor(classes, scale="slide", slide_window=window)
    monkeypatch.setattr(predictor_module, "WINDOW_BATCH_BYTES", 8 << 20)
    image = image_of(height, width, seed=1)
    mask, peak = mask_and_peak_memory(predictor, image)
    assert mask.shape == (height, width)
    full = 4 * classes * height * width  # the (C, H, W) float32 logits: 504 MB
    band = 4 * classes * window * width  # one row of windows: 21.5 MB
    # The mask, the band (and a plane moved within it), a batch of windows' logits (and their stack), and
    # the post-processing's temporaries of a few bands of BAND_ELEMENTS floats: nothing grows with H.
    bound = height * width + 2 * band + 2 * (8 << 20) + 12 * 4 * postprocess.BAND_ELEMENTS
    assert peak < bound < full / 4


@pytest.mark.parametrize(
    "options",
    [{}, {"slide_long_side": 170}, {"tta": TTA(True, (0.75, 1.0))}, {"slide_long_side": 250, "tta": TTA(True)}],
)
def test_column_strips_give_the_answer_of_whole_rows(options, monkeypatch):
    predictor, _, _ = pointwise_predictor(scale="slide", slide_window=64, slide_stride=40, **options)
    image = image_of(90, 301, seed=3)
    whole = predictor.predict(image, want_probabilities=True)
    assert predictor.column_strips(90, 301) == [(0, 301)]
    single = sum(predictor.windows_for(90, 301, scale, flipped) for scale, flipped in predictor.tta.views)

    monkeypatch.setattr(predictor_module, "SLIDE_BAND_BYTES", 4 * 5 * 64 * 80)  # strips of about 80 columns
    strips = predictor.column_strips(90, 301)
    assert len(strips) >= 3 and strips[0][0] == 0 and strips[-1][1] == 301
    assert all(a[1] == b[0] for a, b in zip(strips, strips[1:]))
    calls = []
    striped = predictor.predict(image, want_probabilities=True, progress=lambda done, total: calls.append(total))
    np.testing.assert_allclose(striped.probabilities, whole.probabilities, rtol=0, atol=1e-6)
    assert np.array_equal(striped.mask, whole.mask)
    # the windows that straddle a strip's edge run once for each side
    assert striped.windows == calls[-1] > single == whole.windows


def test_a_wide_picture_is_done_in_strips_so_the_band_does_not_grow_with_the_width(monkeypatch):
    classes, height, width, window = 21, 150, 12000, 128
    predictor, weight, bias = pointwise_predictor(classes, scale="slide", slide_window=window)
    monkeypatch.setattr(predictor_module, "WINDOW_BATCH_BYTES", 4 << 20)
    monkeypatch.setattr(predictor_module, "SLIDE_BAND_BYTES", 16 << 20)
    image = image_of(height, width, seed=2)
    band = 4 * classes * window * width  # one row of windows across the whole width: 129 MB
    assert len(predictor.column_strips(height, width)) == -(-band // (16 << 20))
    mask, peak = mask_and_peak_memory(predictor, image)
    # One strip's band (16 MB), a batch of windows, the post-processing's bands and the mask: well under the
    # whole row's band, which alone would pass the bound.
    assert peak < band / 2, peak
    expected = pointwise_logits(weight, bias, image).argmax(axis=0)
    assert (mask == expected).mean() > 0.999  # ties in float32 aside, the per-pixel classes


# -- real trained models


@pytest.fixture(scope="module")
def trained(trained_model_dir):
    return trained_model_dir


@pytest.mark.parametrize("size", [(60, 50), (64, 64), (40, 64), (17, 3)])
def test_a_picture_that_fits_in_one_window_gets_the_native_mask_exactly(trained, size):
    native = load_predictor(trained)
    slide = load_predictor(trained, scale="slide", slide_window=64)
    image = image_of(*size, seed=sum(size))
    a, b = native.predict(image, want_probabilities=True), slide.predict(image, want_probabilities=True)
    assert b.windows == 1
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.probabilities, b.probabilities)


def mirror_symmetric(height: int, width: int, seed: int) -> np.ndarray:
    half = image_of(height, width // 2, seed=seed)
    return np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))


@pytest.mark.parametrize(("scale", "options"), [("native", {}), ("crop", {}), ("slide", {"slide_window": 64})])
def test_flip_tta_on_a_mirror_symmetric_picture_gives_a_mirror_symmetric_mask(trained, scale, options):
    image = mirror_symmetric(72, 96, seed=2)  # width a multiple of 8: native scale pads nothing on the right
    assert np.array_equal(image, image[:, ::-1])
    plain = load_predictor(trained, scale=scale, **options).predict(image, want_probabilities=True)
    flipped = load_predictor(trained, scale=scale, tta=parse_tta("flip"), **options)
    result = flipped.predict(image, want_probabilities=True)
    assert np.array_equal(result.mask, result.mask[:, ::-1])
    assert np.array_equal(result.probabilities, result.probabilities[:, :, ::-1])
    assert not np.array_equal(plain.probabilities, plain.probabilities[:, :, ::-1])  # without TTA it is not
    assert result.windows == 2 * plain.windows


@pytest.mark.parametrize("scale", ["native", "crop", "slide"])
def test_tta_scales_change_the_probabilities_and_the_mask_stays_their_argmax(trained, scale):
    image = image_of(90, 130, seed=7)
    plain = load_predictor(trained, scale=scale).predict(image, want_probabilities=True)
    tta = load_predictor(trained, scale=scale, tta=parse_tta("flip,scales=0.75,1,1.25"))
    result = tta.predict(image, want_probabilities=True)
    assert result.probabilities.shape == plain.probabilities.shape
    assert np.abs(result.probabilities - plain.probabilities).max() > 1e-3
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(result.mask, result.probabilities.argmax(axis=0))
    assert np.array_equal(tta.predict(image).mask, result.mask)  # the mask-only path agrees


def test_probabilities_over_the_bound_are_refused_before_any_work(trained):
    predictor = load_predictor(trained, scale="slide", max_probability_bytes=4 * 4 * 100 * 100)
    assert predictor.predict(image_of(100, 100), want_probabilities=True).probabilities.shape == (4, 100, 100)
    calls = []
    with pytest.raises(ProbabilitiesTooLarge, match="GLUONSEG_MAX_PROBABILITIES_MB"):
        predictor.predict(image_of(100, 101), want_probabilities=True, progress=lambda *a: calls.append(a))
    assert calls == []
    assert predictor.predict(image_of(100, 101)).mask.shape == (100, 101)  # the mask is not bounded by it


# -- the TTA setting


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, TTA()),
        ("none", TTA()),
        ("flip", TTA(flip=True)),
        (" Flip ", TTA(flip=True)),
        ("scales=0.75,1,1.25", TTA(scales=(0.75, 1.0, 1.25))),
        ("flip,scales=0.5,1", TTA(True, (0.5, 1.0))),
        ("scales=0.5,1,flip", TTA(True, (0.5, 1.0))),
    ],
)
def test_tta_specs(text, expected):
    assert parse_tta(text) == expected
    assert parse_tta(str(expected)) == expected


@pytest.mark.parametrize("text", ["mirror", "scales=", "scales=a", "scales=0", "scales=1,1", "scales=9", "flip,2"])
def test_bad_tta_specs_are_named(text):
    with pytest.raises(ClientError, match="--tta"):
        parse_tta(text)
