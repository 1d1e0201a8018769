"""The model folder (`/opt/ml/model`, tarred by SageMaker into model.tar.gz), written and read.

Contents, drop-in with the built-in algorithm and loadable without gluonseg:
- `hyperparams.json`: the job's typed hyperparameters at the top level (as the built-in writes
  them), plus `_gluonseg` with what a server needs (classes, sizes, mean/std, palette, versions).
- `model_best.params`: Gluon parameters of the epoch with the best validation mIOU.
- `model_algo-1`: Gluon parameters of the last epoch. Both load with `load_parameters` into
  GluonCV's `FCN` / `PSPNet` / `DeepLabV3(num_classes, backbone=..., crop_size=...)`.
- `model-symbol.json` + `model-0000.params`: the best network exported as a symbolic graph (main
  head only, input `data` of shape (1, 3, crop_size, crop_size)), for plain MXNet and SageMaker Neo.
- `class_stats.json`: gluonseg's; the training masks' pixel share per class and the loss's class weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gluonseg.archives import safe_extract
from gluonseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from gluonseg.environment import read_json_file
from gluonseg.errors import AlgorithmError, ClientError
from gluonseg.files import link_or_copy
from gluonseg.hyperparameters import Hyperparameters, parse, typed_for_json

log = logging.getLogger(__name__)

HYPERPARAMS_FILE = "hyperparams.json"
LAST_PARAMS = "model_algo-1"
BEST_PARAMS = "model_best.params"
SYMBOL_PREFIX = "model"
SYMBOL_FILE = "model-symbol.json"
SYMBOL_PARAMS = "model-0000.params"
META_KEY = "_gluonseg"
FORMAT = "gluonseg-model/1"
CLASS_STATS_FILE = "class_stats.json"


@dataclass
class ModelArtifact:
    """A model folder, read back: what to build and which parameters to load."""

    folder: Path
    hp: Hyperparameters
    meta: dict[str, Any]

    @property
    def params_path(self) -> Path:
        best = self.folder / BEST_PARAMS
        return best if best.exists() else self.folder / LAST_PARAMS

    @property
    def num_classes(self) -> int:
        return int(self.hp.num_classes)

    @property
    def class_names(self) -> list[str]:
        from gluonseg.palette import class_names

        return list(self.meta.get("class_names") or class_names(self.num_classes))


def versions() -> dict[str, str]:
    import gluoncv
    import mxnet
    import numpy

    import gluonseg

    return {
        "gluonseg": gluonseg.__version__,
        "mxnet": mxnet.__version__,
        "gluoncv": gluoncv.__version__,
        "numpy": numpy.__version__,
    }


def write_hyperparams(folder: Path, hp: Hyperparameters, meta: dict[str, Any]) -> None:
    from gluonseg.palette import class_names, voc_palette

    full_meta = {
        "format": FORMAT,
        "num_classes": hp.num_classes,
        "algorithm": hp.algorithm,
        "backbone": hp.backbone,
        "crop_size": hp.crop_size,
        "base_size": hp.base_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "class_names": class_names(hp.num_classes),
        "palette": voc_palette(),
        "files": {"best": BEST_PARAMS, "last": LAST_PARAMS, "symbol": SYMBOL_FILE, "symbol_params": SYMBOL_PARAMS},
        "versions": versions(),
        **meta,
    }
    data = {**typed_for_json(hp), META_KEY: full_meta}
    (folder / HYPERPARAMS_FILE).write_text(json.dumps(data, indent=1))


def export_symbol(folder: Path, hp: Hyperparameters, params_file: Path) -> None:
    """Export the main head of the network in `params_file` as model-symbol.json/model-0000.params."""
    import mxnet as mx

    from gluonseg.models import build_network

    net = build_network(
        hp.algorithm,
        hp.backbone,
        hp.num_classes,
        hp.crop_size,
        hp.base_size,
        pretrained_backbone=False,
        ctx=mx.cpu(),
        aux=False,
    )
    net.load_parameters(str(params_file), ctx=mx.cpu(), ignore_extra=True)
    net.hybridize(static_alloc=True, static_shape=True)
    net(mx.nd.zeros((1, 3, hp.crop_size, hp.crop_size)))
    net.export(str(folder / SYMBOL_PREFIX), epoch=0)


def read_model_dir(folder: Path) -> ModelArtifact:
    """Read a model folder written by gluonseg or by the built-in algorithm."""
    path = folder / HYPERPARAMS_FILE
    if not path.exists():
        raise ClientError(f"{folder} is not a model folder: {HYPERPARAMS_FILE} is missing")
    data = read_json_file(path, "model hyperparameters file")
    if not isinstance(data, dict):
        raise ClientError(f"{path} must hold a JSON object")
    meta = data.pop(META_KEY, {}) or {}
    raw = {k: ",".join(str(x) for x in v) if isinstance(v, list) else v for k, v in data.items()}
    hp = parse(raw, log_ignored=False)  # a saved model carries every value, used or not
    artifact = ModelArtifact(folder, hp, meta)
    if not artifact.params_path.exists():
        raise ClientError(f"{folder} holds neither {BEST_PARAMS} nor {LAST_PARAMS}")
    return artifact


def open_model_source(source: Path, workdir: Path | None = None) -> ModelArtifact:
    """A model folder, a model.tar.gz, or a folder holding exactly one model.tar.gz (the model channel)."""
    if source.is_dir() and (source / HYPERPARAMS_FILE).exists():
        return read_model_dir(source)
    archive = source
    if source.is_dir():
        tars = sorted(p for p in source.iterdir() if p.name.endswith((".tar.gz", ".tgz", ".tar")))
        if len(tars) != 1:
            raise ClientError(
                f"The model channel {source} must hold one model.tar.gz (or an extracted model folder); "
                f"found {len(tars)} archives"
            )
        archive = tars[0]
    if not archive.exists():
        raise ClientError(f"No model at {source}")
    dest = Path(tempfile.mkdtemp(prefix="gluonseg-model-", dir=workdir))
    try:
        safe_extract(archive, dest)
        return read_model_dir(dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


@contextmanager
def model_source(source: Path, workdir: Path | None = None) -> Iterator[ModelArtifact]:
    """`open_model_source` for the length of a `with` block: an archive's extracted copy is removed after."""
    artifact = open_model_source(source, workdir)
    try:
        yield artifact
    finally:
        if artifact.folder.resolve() != source.resolve():
            shutil.rmtree(artifact.folder, ignore_errors=True)


def check_compatible(previous: Hyperparameters, current: Hyperparameters) -> None:
    """Incremental training: the network's shape must be the same as in the earlier job."""
    mismatches = [
        f"{name} is {previous[name]!r} in the model but {current[name]!r} in this job"
        for name in ("backbone", "algorithm", "crop_size", "num_classes")
        if previous[name] != current[name]
    ]
    if mismatches:
        raise ClientError(
            "The model channel's model does not match this job: "
            + "; ".join(mismatches)
            + ". Incremental training needs the same backbone, algorithm, crop_size and num_classes"
        )


def finalize_model_dir(
    folder: Path, hp: Hyperparameters, best_params: Path, last_params: Path, meta: dict[str, Any]
) -> None:
    """Write the model folder from the trainer's best and last parameter files.

    The parameters stay in the checkpoint folder, so a failure here loses no training: fix the cause
    and rerun the job, which finds the finished checkpoint and only writes the model folder.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        link_or_copy(last_params, folder / LAST_PARAMS)
        # When the last epoch was the best, both names hold one file (tar keeps the hard link).
        same = os.path.samefile(best_params, last_params)
        link_or_copy(folder / LAST_PARAMS if same else best_params, folder / BEST_PARAMS)
        export_symbol(folder, hp, folder / BEST_PARAMS)
        write_hyperparams(folder, hp, meta)
    except OSError as exc:
        raise AlgorithmError(
            f"Cannot write the model folder {folder}: {exc.strerror or exc}; the trained parameters "
            f"are kept in {best_params.parent}"
        ) from None
    log.info("model written to %s", folder)


def write_class_stats(folder: Path, stats: dict[str, Any]) -> None:
    """`class_stats.json`: the training masks' per-class pixels and share, and the class weights used."""
    try:
        (folder / CLASS_STATS_FILE).write_text(json.dumps(stats, indent=1))
    except OSError as exc:
        raise AlgorithmError(f"Cannot write {folder / CLASS_STATS_FILE}: {exc.strerror or exc}") from None


def read_class_stats(folder: Path) -> dict[str, Any] | None:
    """A model folder's `class_stats.json`, or None (the built-in's folders and older gluonseg's have none)."""
    path = folder / CLASS_STATS_FILE
    if not path.exists():
        return None
    data = read_json_file(path, "class statistics file")
    return data if isinstance(data, dict) else None
