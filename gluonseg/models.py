"""Building FCN, PSPNet and DeepLabV3 networks with GluonCV's own classes.

The networks are GluonCV's `FCN`, `PSPNet` and `DeepLabV3` (dilated ResNet-v1s backbone, output
stride 8, auxiliary FCN head on layer3), so a trained `.params` file loads straight into
`gluoncv.model_zoo.FCN(num_classes, backbone='resnet50', pretrained_base=False, ...)`.

GluonCV's `pretrained_base=True` downloads the ImageNet weights inside the constructor, from a host
that no longer answers reliably. We always construct with `pretrained_base=False` and then load the
backbone ourselves: a ResNetV1b is built with the same arguments as `SegBaseModel` uses
(`dilated=True`, the norm layer) and loaded strictly from the file `gluonseg.pretrained` resolves,
and its parameters are copied by structural name into the network's `conv1, bn1, layer1..layer4`
(the attributes `SegBaseModel` copies from that same ResNetV1b).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import mxnet as mx
from mxnet import gluon

from gluonseg import pretrained
from gluonseg.errors import ClientError, error_summary

log = logging.getLogger(__name__)

OUTPUT_STRIDE = 8  # dilated layer3/layer4: features are 1/8 of the input

# SageMaker's names -> GluonCV's backbone names and the ImageNet weights SegBaseModel would load.
BACKBONES = {"resnet-50": "resnet50", "resnet-101": "resnet101"}
IMAGENET_WEIGHTS = {"resnet50": "resnet50_v1s", "resnet101": "resnet101_v1s"}
ALGORITHMS = ("fcn", "psp", "deeplab")

# The parts of SegBaseModel that come from the ResNetV1b (relu and maxpool hold no parameters).
BACKBONE_CHILDREN = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def gluoncv_backbone(backbone: str) -> str:
    """'resnet-50' (SageMaker) or 'resnet50' (GluonCV) -> 'resnet50'."""
    name = BACKBONES.get(backbone, backbone)
    if name not in IMAGENET_WEIGHTS:
        raise ClientError(f"backbone {backbone!r} is not supported; use one of: {', '.join(BACKBONES)}")
    return name


def _contexts(ctx) -> list[mx.Context]:
    if ctx is None:
        return [mx.cpu()]
    return list(ctx) if isinstance(ctx, list | tuple) else [ctx]


def network_input_size(crop_size: int, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """The (height, width) the network is built for; PSP and DeepLab accept only this input size."""
    return (height or crop_size, width or crop_size)


def check_input_size(algorithm: str, height: int, width: int) -> None:
    """PSP/DeepLab resize pooled features to (H/8, W/8) and concatenate, so sides must divide by 8."""
    if algorithm in ("psp", "deeplab") and (height % OUTPUT_STRIDE or width % OUTPUT_STRIDE):
        raise ClientError(
            f"algorithm {algorithm!r} needs an input size that is a multiple of {OUTPUT_STRIDE}; got {height}x{width}"
        )


def _construct(
    algorithm: str,
    backbone: str,
    num_classes: int,
    crop_size: int,
    base_size: int,
    ctxs: list[mx.Context],
    aux: bool,
    height: int | None,
    width: int | None,
    norm_kwargs_for_net: dict,
) -> gluon.HybridBlock:
    from gluoncv.model_zoo import FCN, DeepLabV3, PSPNet

    classes = {"fcn": FCN, "psp": PSPNet, "deeplab": DeepLabV3}
    if algorithm not in classes:
        raise ClientError(f"algorithm {algorithm!r} is not supported; use one of: {', '.join(ALGORITHMS)}")
    h, w = network_input_size(crop_size, height, width)
    check_input_size(algorithm, h, w)
    # PSPNet's constructor prints its crop size to stdout; keep stdout for what we mean to say.
    with contextlib.redirect_stdout(io.StringIO()):
        return classes[algorithm](
            num_classes,
            backbone=gluoncv_backbone(backbone),
            aux=aux,
            ctx=ctxs,
            pretrained_base=False,
            base_size=base_size,
            crop_size=crop_size,
            height=h,
            width=w,
            **norm_kwargs_for_net,
        )


def backbone_parameters(net: gluon.Block) -> dict[str, gluon.Parameter]:
    """The network's backbone parameters by structural name ('layer1.0.conv1.weight', ...)."""
    return {
        name: param
        for name, param in net._collect_params_with_prefix().items()
        if name.split(".", 1)[0] in BACKBONE_CHILDREN
    }


def _load_imagenet_backbone(net: gluon.Block, backbone: str, ctxs: list[mx.Context], norm_kwargs_for_net: dict) -> None:
    name = IMAGENET_WEIGHTS[gluoncv_backbone(backbone)]
    source = pretrained.load_backbone(name, ctx=ctxs, dilated=True, **norm_kwargs_for_net)
    src = source._collect_params_with_prefix()
    dst = backbone_parameters(net)
    missing = sorted(set(dst) - set(src))
    # The classifier ('fc.*') is the only part of an ImageNet ResNet a segmentation network drops.
    unused = sorted(k for k in set(src) - set(dst) if not k.startswith("fc."))
    if missing or unused:
        raise AssertionError(f"backbone mismatch with {name}: missing {missing[:5]}, unused {unused[:5]}")
    for key, param in dst.items():
        # `_load_init` is what Block.load_parameters uses: it sets shape and data on every context.
        param._load_init(src[key].data(ctxs[0]), ctxs)
    log.info("loaded ImageNet weights %s into %d backbone parameters", name, len(dst))


def build_network(
    algorithm: str,
    backbone: str,
    num_classes: int,
    crop_size: int,
    base_size: int,
    pretrained_backbone: bool,
    ctx=None,
    norm_layer=None,
    norm_kwargs: dict | None = None,
    aux: bool = True,
    height: int | None = None,
    width: int | None = None,
) -> gluon.HybridBlock:
    """A ready-to-train GluonCV segmentation network; every parameter is initialised.

    The heads get GluonCV's own initialisation. The backbone gets the ImageNet weights when
    `pretrained_backbone` (or a ClientError when they cannot be had), else He (MSRA) initialisation,
    as GluonCV uses to train ResNets from scratch.
    """
    ctxs = _contexts(ctx)
    extra = {}
    if norm_layer is not None:
        extra["norm_layer"] = norm_layer
    if norm_kwargs is not None:
        extra["norm_kwargs"] = norm_kwargs
    net = _construct(algorithm, backbone, num_classes, crop_size, base_size, ctxs, aux, height, width, extra)
    if pretrained_backbone:
        _load_imagenet_backbone(net, backbone, ctxs, extra)
    else:
        for child in BACKBONE_CHILDREN:
            getattr(net, child).initialize(mx.init.MSRAPrelu(), ctx=ctxs)
    return net


def load_trained_network(
    params_file: Path | str,
    algorithm: str,
    backbone: str,
    num_classes: int,
    crop_size: int,
    base_size: int,
    ctx=None,
    aux: bool | None = None,
    height: int | None = None,
    width: int | None = None,
) -> gluon.HybridBlock:
    """A network loaded from a trained `.params` file (serving, incremental training).

    `aux=None` follows the file; `aux=False` on a file with the auxiliary head drops that head
    (inference does not need it). Any other mismatch is a ClientError naming the file.
    """
    ctxs = _contexts(ctx)
    try:
        arrays = mx.nd.load(str(params_file))
    except mx.base.MXNetError as exc:
        reason = error_summary(exc)
        raise ClientError(f"{params_file}: not an MXNet parameter file ({reason})") from None
    if not isinstance(arrays, dict):
        raise ClientError(f"{params_file}: not a Gluon parameter file (it holds an unnamed list of arrays)")
    file_has_aux = any(k.startswith("auxlayer.") for k in arrays)
    use_aux = file_has_aux if aux is None else aux
    net = _construct(algorithm, backbone, num_classes, crop_size, base_size, ctxs, use_aux, height, width, {})
    params = net._collect_params_with_prefix()
    missing = sorted(set(params) - set(arrays))
    extra = sorted(k for k in set(arrays) - set(params) if not (k.startswith("auxlayer.") and not use_aux))
    if missing or extra:
        raise ClientError(
            f"{params_file} does not match a {algorithm} network on {backbone} with {num_classes} classes: "
            f"missing parameters {missing[:5]}, unexpected parameters {extra[:5]}"
        )
    for key, param in params.items():
        try:
            param._load_init(arrays[key], ctxs)
        except AssertionError as exc:  # MXNet reports shape and dtype mismatches with assert
            raise ClientError(
                f"{params_file} does not match a {algorithm} network on {backbone} with {num_classes} classes: "
                f"parameter {key}: {str(exc)[:300]}"
            ) from None
    return net
