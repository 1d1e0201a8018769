"""The Predictor: any input size in, same size out; one compiled graph; tiles, resize and softmax done right."""

from __future__ import annotations

import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import cv2
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from PIL import Image

from gluonseg.artifacts import BEST_PARAMS
from gluonseg.data.transforms import normalize
from gluonseg.inference import postprocess
from gluonseg.inference.geometry import resized_size, tile_starts
from gluonseg.inference.loading import load_predictor
from gluonseg.inference.postprocess import logits_to_prediction
from gluonseg.inference.predictor import Predictor
from gluonseg.models import load_trained_network
from gluonseg.palette import voc_palette
from tests.support.models import CLASSES, CROP, image_of, make_model_dir, softmax

NAMES = ["sky", "road", "car", "tree"]


@pytest.fixture(scope="module")
def fcn_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("fcn"), "fcn", meta={"class_names": NAMES})


@pytest.fixture(scope="module")
def fcn(fcn_dir):
    return load_predictor(fcn_dir)


# -- geometry


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((64, 64), (64, 64)),
        ((65, 97), (64, 95)),  # short side to crop, long side truncated as in val_crop_transform
        ((200, 150), (85, 64)),
        ((1, 1), (64, 64)),  # small images are scaled up
        ((3, 500), (3, 512)),  # aspect > 8: long side capped at 8 crops, short side scaled alike
        ((5000, 3), (512, 1)),  # ... and at least one pixel
        ((64, 512), (64, 512)),  # exactly 8 crops: no cap
    ],
)
def test_resized_size(size, expected):
    assert resized_size(*size, CROP) == expected


@pytest.mark.parametrize("length", [1, 63, 64, 65, 105, 106, 107, 200, 512, 3000])
def test_tiles_cover_the_side_with_two_thirds_stride_and_last_tile_flush(length):
    starts = tile_starts(length, CROP)
    assert starts[0] == 0
    if length <= CROP:
        assert starts == [0]
        return
    assert starts[-1] == length - CROP  # flush with the end: no padding needed
    steps = np.diff(starts)
    assert (steps > 0).all() and (steps <= int(CROP * 2 / 3)).all()
    assert (steps[:-1] == int(CROP * 2 / 3)).all()
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + CROP] = True
    assert covered.all()


# -- the real networks


@pytest.mark.parametrize("size", [(64, 64), (65, 97), (200, 150), (1, 1), (3, 500), (500, 3), (3, 5000), (5000, 3)])
def test_output_has_the_input_size_and_probabilities_are_a_softmax(fcn, size):
    image = image_of(*size, seed=size[0] + size[1])
    result = fcn.predict(image, want_probabilities=True)
    assert result.mask.shape == size and result.mask.dtype == np.uint8
    probs = result.probabilities
    assert probs.shape == (CLASSES, *size) and probs.dtype == np.float32
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(result.mask, probs.argmax(axis=0))
    assert result.mask.max() < CLASSES
    # The mask-only path gives the same mask, and asks for no probabilities.
    assert np.array_equal(fcn.predict_mask(image), result.mask)
    assert fcn.predict(image).probabilities is None


def test_predict_probabilities_and_mask_agree(fcn):
    image = image_of(90, 70, seed=5)
    probs = fcn.predict_probabilities(image)
    assert np.array_equal(fcn.predict_mask(image), probs.argmax(axis=0))


def test_properties_come_from_the_model_folder(fcn):
    assert fcn.num_classes == CLASSES
    assert fcn.crop_size == CROP
    assert fcn.class_names == NAMES
    assert fcn.palette == voc_palette()
    assert fcn.algorithm == "fcn"


def test_crop_sized_image_equals_one_forward_of_the_plain_network(fcn, fcn_dir):
    # A separate, non-hybridized copy of the same weights, without tiling or resizing.
    plain = load_trained_network(fcn_dir / BEST_PARAMS, "fcn", "resnet-50", CLASSES, CROP, 72, aux=False)
    image = image_of(CROP, CROP, seed=11)
    direct = plain(mx.nd.array(normalize(image)[None]))[0].asnumpy()[0]
    np.testing.assert_allclose(fcn.predict_probabilities(image), softmax(direct), atol=1e-5)


def test_crop_scale_traces_one_graph_for_requests_of_any_size(fcn_dir, monkeypatch):
    builds, traces, shapes = [], [], []
    build_cache = gluon.HybridBlock._build_cache
    call_cached_op = gluon.HybridBlock._call_cached_op

    def counting_build_cache(self, *args):
        builds.append(self)
        return build_cache(self, *args)

    def recording_call_cached_op(self, *args):
        shapes.append(tuple(a.shape for a in args))
        return call_cached_op(self, *args)

    from gluoncv.model_zoo import FCN

    hybrid_forward = FCN.hybrid_forward

    def counting_hybrid_forward(self, F, *args, **kwargs):
        if F is mx.sym:
            traces.append(self)
        return hybrid_forward(self, F, *args, **kwargs)

    monkeypatch.setattr(gluon.HybridBlock, "_build_cache", counting_build_cache)
    monkeypatch.setattr(FCN, "hybrid_forward", counting_hybrid_forward)
    monkeypatch.setattr(gluon.HybridBlock, "_call_cached_op", recording_call_cached_op)
    predictor = load_predictor(fcn_dir, scale="crop")
    cached_op = predictor.network.net._cached_op
    assert cached_op is not None  # compiled at load time, before any request
    for size in [(64, 64), (65, 97), (150, 200), (1, 1), (3, 300), (64, 64)]:
        predictor.predict(image_of(*size), want_probabilities=size[0] % 2 == 0)
    assert builds == [predictor.network.net]
    assert traces == [predictor.network.net]
    assert predictor.network.net._cached_op is cached_op
    # The compiled graph only ever sees its one input shape (several tiles for the larger images).
    assert len(shapes) > 7 and set(shapes) == {((1, 3, CROP, CROP),)}


def test_concurrent_requests_match_serial_ones(fcn, monkeypatch):
    images = [image_of(64 + 3 * i, 64 + 7 * (i % 3), seed=100 + i) for i in range(8)]
    serial = [fcn.predict(im, want_probabilities=True) for im in images]
    barrier = threading.Barrier(len(images))
    # Count network calls in flight: a static-alloc graph must never run twice at once.
    active, most = [0], [0]
    call_cached_op = gluon.HybridBlock._call_cached_op

    def watched_call_cached_op(self, *args):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.005)  # widen the window an unguarded call would overlap in
        try:
            return call_cached_op(self, *args)
        finally:
            active[0] -= 1

    monkeypatch.setattr(gluon.HybridBlock, "_call_cached_op", watched_call_cached_op)

    def run(image):
        barrier.wait()  # start together so the network calls really overlap
        return fcn.predict(image, want_probabilities=True)

    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        concurrent = list(pool.map(run, images))
    for a, b in zip(serial, concurrent):
        assert np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.probabilities, b.probabilities)
    assert most[0] == 1


@pytest.mark.parametrize("algorithm", ["psp", "deeplab"])
def test_psp_and_deeplab_models(tmp_path, algorithm):
    folder = make_model_dir(tmp_path / algorithm, algorithm)
    predictor = load_predictor(folder)
    assert predictor.algorithm == algorithm
    for size in [(64, 64), (65, 97), (2, 1)]:
        result = predictor.predict(image_of(*size), want_probabilities=True)
        assert result.mask.shape == size and result.probabilities.shape == (CLASSES, *size)
        np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
        assert np.array_equal(result.mask, result.probabilities.argmax(axis=0))
    plain = load_trained_network(folder / BEST_PARAMS, algorithm, "resnet-50", CLASSES, CROP, 72, aux=False)
    image = image_of(CROP, CROP, seed=12)
    direct = plain(mx.nd.array(normalize(image)[None]))[0].asnumpy()[0]
    np.testing.assert_allclose(predictor.predict_probabilities(image), softmax(direct), atol=1e-5)


def test_rejects_what_is_not_an_rgb_uint8_image(fcn):
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32)):
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            fcn.predict(bad)
    with pytest.raises(ValueError, match="at least 1x1"):
        fcn.predict(np.zeros((0, 5, 3), np.uint8))


# -- tiling and resizing, checked with a pointwise network (1x1 convolution)


class Pointwise(gluon.HybridBlock):
    """Per-pixel logits: with no spatial context, tiling must give exactly the whole-image answer."""

    def __init__(self, classes: int):
        super().__init__()
        self.conv = gluon.nn.Conv2D(classes, 1, in_channels=3)

    def hybrid_forward(self, F, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def pointwise():
    net = Pointwise(5)
    net.initialize(mx.init.Normal(1.0))
    weight = net.conv.weight.data().asnumpy()[:, :, 0, 0]
    bias = net.conv.bias.data().asnumpy()
    bias[:] = np.arange(5, dtype=np.float32) * 0.1
    net.conv.bias.set_data(mx.nd.array(bias))
    return Predictor.from_network(net, num_classes=5, crop_size=16), weight, bias


@pytest.mark.parametrize("size", [(16, 16), (17, 40), (40, 17), (16, 300), (300, 16), (2, 1000), (1000, 2), (1, 1)])
def test_tiles_average_to_the_whole_image_answer(pointwise, size):
    """Crop scale (averaged_logits), whichever scale the Predictor was made with."""
    predictor, weight, bias = pointwise
    image = image_of(*size, seed=size[0] * 7 + size[1])
    new_h, new_w = resized_size(*size, 16)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    expected = np.einsum("kc,chw->khw", weight, normalize(resized)) + bias[:, None, None]
    logits = predictor.averaged_logits(image)
    assert logits.shape == (5, new_h, new_w)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("src", "dst"), [((6, 8), (30, 41)), ((40, 30), (7, 5)), ((9, 9), (9, 9)), ((1, 4), (3, 9))])
def test_logits_are_resized_bilinearly_then_softmaxed(src, dst):
    logits = np.random.default_rng(0).normal(size=(3, *src)).astype(np.float32)
    result = logits_to_prediction(logits, *dst, want_probabilities=True)
    # OpenCV's INTER_LINEAR uses the same half-pixel centres and edge clamping.
    reference = cv2.resize(logits.transpose(1, 2, 0), (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    reference = reference.reshape(*dst, 3).transpose(2, 0, 1)
    np.testing.assert_allclose(result.probabilities, softmax(reference), atol=1e-5)
    assert np.array_equal(result.mask, result.probabilities.argmax(axis=0))


def test_bands_change_nothing(monkeypatch):
    logits = np.random.default_rng(1).normal(size=(4, 11, 13)).astype(np.float32)
    whole = logits_to_prediction(logits, 57, 31, want_probabilities=True)
    monkeypatch.setattr(postprocess, "BAND_ELEMENTS", 4 * 31 * 5)  # 5 rows per band, the last one shorter
    banded = logits_to_prediction(logits, 57, 31, want_probabilities=True)
    assert np.array_equal(whole.probabilities, banded.probabilities)
    assert np.array_equal(whole.mask, banded.mask)
    assert np.array_equal(logits_to_prediction(logits, 57, 31, want_probabilities=False).mask, banded.mask)


def test_mask_follows_the_probabilities_even_where_softmax_rounds_a_near_tie():
    # Class 1 beats class 0 by 1e-9, which float32 softmax cannot tell apart: argmax must follow the probabilities.
    logits = np.zeros((2, 1, 1), np.float32)
    logits[1] = 1e-9
    assert logits.argmax(axis=0)[0, 0] == 1
    result = logits_to_prediction(logits, 2, 2, want_probabilities=True)
    assert np.array_equal(result.mask, result.probabilities.argmax(axis=0))
    assert np.array_equal(logits_to_prediction(logits, 2, 2, want_probabilities=False).mask, result.mask)


def test_mask_of_a_large_image_needs_no_full_size_float_array():
    logits = np.random.default_rng(2).normal(size=(21, 48, 64)).astype(np.float32)
    height, width = 1200, 1600  # the full (21, H, W) float32 array would be 161 MB
    tracemalloc.start()
    try:
        mask = logits_to_prediction(logits, height, width, want_probabilities=False).mask
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mask.shape == (height, width)
    assert peak < 64 * 2**20  # bands of a few MB, far below the 161 MB a full-size array would take
