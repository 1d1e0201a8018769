"""The networks: GluonCV's own classes, the shapes they return, and files that load both ways."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import FCN, DeepLabV3, PSPNet

from gluonseg.errors import ClientError
from gluonseg.models import backbone_parameters, build_network, load_trained_network

CROP = 64
CLASSES = 5
GLUONCV_CLASSES = {"fcn": FCN, "psp": PSPNet, "deeplab": DeepLabV3}
SAVED = ("fcn", "psp")


@pytest.fixture(scope="module")
def batch():
    return mx.nd.array(np.random.default_rng(0).normal(size=(1, 3, CROP, CROP)).astype(np.float32))


@pytest.fixture(scope="module")
def nets():
    """One resnet-50 network per algorithm, built once for the whole module."""
    mx.random.seed(1)
    return {
        alg: build_network(alg, "resnet-50", CLASSES, crop_size=CROP, base_size=CROP, pretrained_backbone=False)
        for alg in GLUONCV_CLASSES
    }


@pytest.fixture(scope="module")
def outputs(nets, batch):
    return {alg: net(batch) for alg, net in nets.items()}


@pytest.fixture(scope="module")
def saved(nets, outputs, tmp_path_factory):
    """Two networks' parameters (files are >100 MB each), saved after the forward that fixes every shape."""
    folder = tmp_path_factory.mktemp("saved")
    paths = {}
    for alg in SAVED:
        paths[alg] = folder / f"{alg}.params"
        nets[alg].save_parameters(str(paths[alg]))
    return paths


@pytest.mark.parametrize("algorithm", list(GLUONCV_CLASSES))
def test_each_algorithm_is_gluoncvs_class_and_returns_main_and_aux(nets, outputs, algorithm):
    assert type(nets[algorithm]) is GLUONCV_CLASSES[algorithm]
    out = outputs[algorithm]
    assert isinstance(out, tuple) and len(out) == 2
    for head in out:
        assert head.shape == (1, CLASSES, CROP, CROP)
        assert np.isfinite(head.asnumpy()).all()
    # Two different heads, not the same array twice.
    assert not np.allclose(out[0].asnumpy(), out[1].asnumpy())


def test_backbone_is_dilated_resnet_v1s_with_deep_stem(nets, outputs):
    params = backbone_parameters(nets["fcn"])
    # Deep stem: three 3x3 convs (64, 64, 128) instead of one 7x7.
    assert params["conv1.0.weight"].shape == (64, 3, 3, 3)
    assert params["conv1.6.weight"].shape == (128, 64, 3, 3)
    assert {k.split(".")[0] for k in params} == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
    # ResNet-50 has 3, 4, 6, 3 bottlenecks.
    assert {int(k.split(".")[1]) for k in params if k.startswith("layer3.")} == set(range(6))
    # Output stride 8: layer3/layer4 keep the resolution and dilate instead (2, then 4).
    net = nets["fcn"]
    assert net.layer3[0].conv2._kwargs["stride"] == (1, 1) and net.layer4[0].conv2._kwargs["stride"] == (1, 1)
    assert net.layer3[1].conv2._kwargs["dilate"] == (2, 2) and net.layer4[1].conv2._kwargs["dilate"] == (4, 4)


def test_resnet101_fcn_builds_and_runs(batch):
    net = build_network("fcn", "resnet-101", CLASSES, crop_size=CROP, base_size=CROP, pretrained_backbone=False)
    params = backbone_parameters(net)
    assert {int(k.split(".")[1]) for k in params if k.startswith("layer3.")} == set(range(23))
    main, aux = net(batch)
    assert main.shape == aux.shape == (1, CLASSES, CROP, CROP)


@pytest.mark.parametrize("algorithm", SAVED)
def test_saved_parameters_load_into_plain_gluoncv_class(nets, saved, algorithm):
    """SageMaker users load artifacts with gluoncv's constructors; the same file must work there."""
    plain = GLUONCV_CLASSES[algorithm](CLASSES, backbone="resnet50", crop_size=CROP, pretrained_base=False)
    plain.load_parameters(str(saved[algorithm]))  # strict: no missing, no extra
    assert_same_parameters(plain, nets[algorithm])


def assert_same_parameters(a, b, skip_prefix: str | None = None) -> None:
    pa, pb = a._collect_params_with_prefix(), b._collect_params_with_prefix()
    if skip_prefix:
        pb = {k: v for k, v in pb.items() if not k.startswith(skip_prefix)}
    assert set(pa) == set(pb)
    for key in pa:
        assert np.array_equal(pa[key].data().asnumpy(), pb[key].data().asnumpy()), key


def test_load_trained_network_roundtrip_and_dropping_aux(nets, saved):
    path = saved["psp"]
    net = load_trained_network(path, "psp", "resnet-50", CLASSES, crop_size=CROP, base_size=CROP)
    assert type(net) is PSPNet and net.aux
    assert_same_parameters(net, nets["psp"])

    # Serving drops the auxiliary head: same parameters minus auxlayer.
    lean = load_trained_network(path, "psp", "resnet-50", CLASSES, crop_size=CROP, base_size=CROP, aux=False)
    assert not lean.aux
    assert_same_parameters(lean, nets["psp"], skip_prefix="auxlayer.")


def test_load_trained_network_refuses_a_mismatched_file(saved, tmp_path):
    path = saved["fcn"]
    with pytest.raises(ClientError, match="fcn.params.*7 classes.*head"):
        load_trained_network(path, "fcn", "resnet-50", 7, crop_size=CROP, base_size=CROP)
    with pytest.raises(ClientError, match="fcn.params.*missing parameters.*head"):
        load_trained_network(path, "psp", "resnet-50", CLASSES, crop_size=CROP, base_size=CROP)
    junk = tmp_path / "junk.params"
    junk.write_bytes(b"not a parameter file")
    with pytest.raises(ClientError, match="junk.params"):
        load_trained_network(junk, "fcn", "resnet-50", CLASSES, crop_size=CROP, base_size=CROP)


def test_bad_choices_are_client_errors():
    with pytest.raises(ClientError, match="backbone 'resnet-152'"):
        build_network("fcn", "resnet-152", CLASSES, CROP, CROP, pretrained_backbone=False)
    with pytest.raises(ClientError, match="algorithm 'unet'"):
        build_network("unet", "resnet-50", CLASSES, CROP, CROP, pretrained_backbone=False)
    with pytest.raises(ClientError, match="multiple of 8.*60x60"):
        build_network("deeplab", "resnet-50", CLASSES, 60, 60, pretrained_backbone=False)
