"""Native scale: the whole image at its own size, exactly GluonCV's predict(), one compiled graph per shape."""

from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import FCN, DeepLabV3, PSPNet

from gluonseg.artifacts import BEST_PARAMS
from gluonseg.data.transforms import normalize
from gluonseg.inference import geometry, shape_graphs
from gluonseg.inference.geometry import native_canvas_shape, native_size
from gluonseg.inference.loading import load_predictor
from gluonseg.inference.predictor import Predictor
from gluonseg.inference.shape_graphs import respecialise, traced_symbol
from tests.support.models import CLASSES, CROP, image_of, make_model_dir, softmax

STOCK = {"fcn": FCN, "psp": PSPNet, "deeplab": DeepLabV3}


def stock_predict(folder, algorithm: str, image: np.ndarray | None = None, data: np.ndarray | None = None):
    """What a GluonCV user gets: the class, load_parameters, not hybridized, predict() on the whole image."""
    net = STOCK[algorithm](CLASSES, backbone="resnet50", crop_size=CROP, pretrained_base=False)
    net.load_parameters(str(folder / BEST_PARAMS))
    out = net.predict(mx.nd.array((normalize(image) if data is None else data)[None]))
    return (out[0] if isinstance(out, list | tuple) else out).asnumpy()[0]


@pytest.mark.parametrize("algorithm", ["fcn", "psp", "deeplab"])
def test_native_scale_is_gluoncv_predict(tmp_path, algorithm):
    folder = make_model_dir(tmp_path / algorithm, algorithm)
    predictor = load_predictor(folder)
    assert predictor.scale == "native"
    for size in [(96, 72), (72, 136)]:  # multiples of 8 other than the crop, both orientations
        image = image_of(*size, seed=size[0])
        logits = stock_predict(folder, algorithm, image)
        result = predictor.predict(image, want_probabilities=True)
        np.testing.assert_allclose(result.probabilities, softmax(logits), atol=1e-5)
        assert np.array_equal(result.mask, logits.argmax(axis=0))
    assert predictor.network.shape_graphs.shapes() == [(96, 72), (72, 136)]


def test_sides_off_the_multiple_of_8_are_padded_and_cropped(tmp_path):
    folder = make_model_dir(tmp_path / "fcn", "fcn")
    predictor = load_predictor(folder)
    image = image_of(70, 90, seed=4)
    logits = predictor.native_logits(image)
    assert logits.shape == (CLASSES, 70, 90)
    # The padding is the mean colour after normalisation (zeros), not black pixels: compare in that space.
    data = np.zeros((3, 72, 96), np.float32)
    data[:, :70, :90] = normalize(image)
    expected = stock_predict(folder, "fcn", data=data)[:, :70, :90]
    np.testing.assert_allclose(logits, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("size", "max_pixels", "expected"),
    [
        ((600, 800), 1 << 20, (600, 800)),  # the notebook's picture: its own size
        ((3000, 4000), 1 << 20, None),  # a phone photo: scaled down to fit
        ((1, 1), 1 << 20, (1, 1)),
        ((1, 20000), 1 << 20, None),  # extreme aspect: the padded canvas (64 rows) is what counts
        ((500, 500), 64 * 64, None),
    ],
)
def test_native_size_keeps_the_canvas_under_the_pixel_bound(size, max_pixels, expected):
    h, w = native_size(*size, max_pixels)
    if expected is not None:
        assert (h, w) == expected
    canvas_h, canvas_w = native_canvas_shape(h, w)
    assert canvas_h % 8 == 0 and canvas_w % 8 == 0 and min(canvas_h, canvas_w) >= geometry.NATIVE_MIN_SIDE
    assert canvas_h * canvas_w <= max_pixels
    assert 1 <= h <= size[0] and 1 <= w <= size[1]
    if (h, w) != tuple(size):  # scaled down: aspect kept (to a pixel), and not needlessly small
        assert abs(h / w - size[0] / size[1]) <= 1.0 / min(h, w) + 1e-9 or min(h, w) == 1
        assert canvas_h * canvas_w > max_pixels * 0.5


def test_large_pictures_are_scaled_down_and_answered_at_their_size(tmp_path):
    folder = make_model_dir(tmp_path / "fcn", "fcn")
    predictor = load_predictor(folder, native_max_pixels=128 * 128)
    image = image_of(300, 400, seed=8)
    result = predictor.predict(image, want_probabilities=True)
    assert result.mask.shape == (300, 400) and result.probabilities.shape == (CLASSES, 300, 400)
    ((canvas_h, canvas_w),) = predictor.network.shape_graphs.shapes()
    assert canvas_h * canvas_w <= 128 * 128 and canvas_w > canvas_h


def test_graphs_are_compiled_once_per_shape_and_the_cache_is_bounded(tmp_path, monkeypatch):
    folder = make_model_dir(tmp_path / "fcn", "fcn")
    predictor = load_predictor(folder)
    built = []
    load_json = mx.sym.load_json
    monkeypatch.setattr(shape_graphs.mx.sym, "load_json", lambda text: built.append(1) or load_json(text))
    sizes = [(64, 64), (72, 80), (64, 72), (72, 80), (88, 64), (64, 72), (64, 64)]
    for size in sizes:
        predictor.predict(image_of(*size))
    # The crop-sized (64x64) picture runs on the network's own graph: nothing compiled for it. 72x80,
    # 64x72, 88x64 compiled; the cache holds 2, so 88x64 dropped 64x72, which was compiled again.
    assert len(built) == 4
    assert predictor.network.shape_graphs.shapes() == [(88, 64), (64, 72)]


def test_the_rewrite_touches_only_resize_targets_derived_from_the_crop(tmp_path):
    folder = make_model_dir(tmp_path / "psp", "psp")
    predictor = load_predictor(folder, scale="crop")
    text = traced_symbol(predictor.network.net).tojson()
    rewritten = json.loads(respecialise(text, CROP, 96, 72))
    original = json.loads(text)
    resizes = [
        (a["attrs"]["height"], a["attrs"]["width"], b["attrs"]["height"], b["attrs"]["width"])
        for a, b in zip(original["nodes"], rewritten["nodes"])
        if a["op"] == shape_graphs.RESIZE_OP
    ]
    # PSP: four pyramid branches up to the feature map (crop/8), one final resize up to the input.
    assert sorted(resizes) == sorted([("8", "8", "12", "9")] * 4 + [("64", "64", "96", "72")])
    for a, b in zip(original["nodes"], rewritten["nodes"]):
        if a["op"] != shape_graphs.RESIZE_OP:
            assert a == b
    with pytest.raises(ValueError, match="multiple of 8"):
        respecialise(text, CROP, 70, 72)
    with pytest.raises(ValueError, match="not a size derived from crop"):
        respecialise(text, 48, 96, 72)


def test_scale_setting_is_checked():
    net = mx.gluon.nn.Conv2D(2, 1, in_channels=3)
    net.initialize()
    with pytest.raises(ValueError, match="scale must be one of native, crop"):
        Predictor.from_network(net, num_classes=2, crop_size=8, scale="whole")
