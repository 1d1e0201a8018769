"""What a training job needs before its first epoch: seed, devices, network, optimizer, data loaders."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluonseg import artifacts
from gluonseg.data.channels import ClassPixels
from gluonseg.data.dataset import SegmentationDataset, make_loader
from gluonseg.data.inputs import TrainingInputs
from gluonseg.environment import Environment
from gluonseg.errors import AlgorithmError, ClientError
from gluonseg.hyperparameters import Hyperparameters
from gluonseg.models import build_network
from gluonseg.palette import class_names
from gluonseg.training.class_weights import class_stats, describe, resolve_weights
from gluonseg.training.loss import SegmentationLoss
from gluonseg.training.schedule import make_lr_scheduler

log = logging.getLogger("gluonseg.train")


def seed_from_env() -> int | None:
    """`GLUONSEG_SEED` makes a run reproducible (tests); not a hyperparameter, so jobs stay SageMaker's."""
    value = os.environ.get("GLUONSEG_SEED")
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ClientError(f"GLUONSEG_SEED must be an integer, got {value!r}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    mx.random.seed(seed)


def reproducible_seed() -> int | None:
    """The job's seed (GLUONSEG_SEED), already applied to every random generator; None if unset."""
    seed = seed_from_env()
    if seed is not None:
        seed_everything(seed)
        log.info("reproducible mode: GLUONSEG_SEED=%d", seed)
    return seed


def contexts() -> list[mx.Context]:
    gpus = mx.context.num_gpus()
    return [mx.gpu(i) for i in range(gpus)] if gpus else [mx.cpu()]


def optimizer_settings(hp: Hyperparameters) -> tuple[str, dict[str, Any]]:
    """MXNet optimizer name and arguments, as the SageMaker docs assign each hyperparameter.

    momentum and weight_decay are documented for sgd; nag is sgd with Nesterov momentum, so it takes
    both too. rmsprop runs centered, the only MXNet mode in which gamma2 (the momentum factor) acts.
    """
    name = hp.optimizer
    if name in ("sgd", "nag"):
        return name, {"momentum": hp.momentum, "wd": hp.weight_decay}
    if name == "rmsprop":
        return name, {"gamma1": hp.gamma1, "gamma2": hp.gamma2, "centered": True}
    return name, {}


def _build(hp: Hyperparameters, **kwargs: Any) -> gluon.HybridBlock:
    log.info("building %s on %s (%d classes, crop %d)", hp.algorithm, hp.backbone, hp.num_classes, hp.crop_size)
    return build_network(hp.algorithm, hp.backbone, hp.num_classes, hp.crop_size, hp.base_size, **kwargs)


def build_job_network(hp: Hyperparameters, inputs: TrainingInputs, ctxs: list[mx.Context]) -> gluon.HybridBlock:
    """The network to train: fresh (pretrained backbone or not), or the model channel's for incremental
    training; with SyncBatchNorm across several devices when `syncbn` asks for it."""
    norm_layer, norm_kwargs = None, None
    if hp.syncbn:
        if len(ctxs) > 1:
            norm_layer = mx.gluon.contrib.nn.SyncBatchNorm
            norm_kwargs = {"num_devices": len(ctxs)}
        else:
            log.info("syncbn=True ignored: a single device (%s) has nothing to synchronise with", ctxs[0])

    build = {
        "ctx": ctxs,
        "norm_layer": norm_layer,
        "norm_kwargs": norm_kwargs,
    }
    if inputs.model_channel is None:
        return _build(hp, pretrained_backbone=hp.use_pretrained_model, **build)
    with artifacts.model_source(inputs.model_channel) as previous:
        artifacts.check_compatible(previous.hp, hp)
        log.info("incremental training from %s", previous.params_path)
        net = _build(hp, pretrained_backbone=False, **build)
        net.load_parameters(str(previous.params_path), ctx=ctxs, allow_missing=False, ignore_extra=True)
    return net


def make_loss(hp: Hyperparameters, inputs: TrainingInputs, collective: Any) -> tuple[SegmentationLoss, dict[str, Any]]:
    """The job's loss (class weights and OHEM as its extension hyperparameters ask; the built-in's without them)
    and its class statistics for `class_stats.json`, logged. On several hosts the counts are the whole
    training set's on every host (a collective step when each host scanned only its shard)."""
    counts = inputs.train_pixels
    if counts is not None and inputs.train_pixels_per_host:
        counts = ClassPixels.from_stacked(collective.sum_counts("train-class-pixels", counts.stacked()))
    weights = resolve_weights(hp.class_weights, counts)
    stats = class_stats(class_names(hp.num_classes), counts, hp.class_weights, weights, hp.loss)
    for line in describe(stats):
        log.info("%s", line)
    loss = SegmentationLoss(class_weights=None if weights is None else weights.tolist(), ohem=hp.loss == "ohem")
    return loss, stats


def make_trainer(hp: Hyperparameters, net: gluon.HybridBlock, iters: int, kvstore: dict[str, Any]) -> gluon.Trainer:
    """gluon.Trainer with the job's optimizer and schedule; `kvstore` holds its KVStore arguments (the
    collective's `trainer_kvstore`)."""
    opt_name, opt_args = optimizer_settings(hp)
    return gluon.Trainer(
        net.collect_params(),
        opt_name,
        {"learning_rate": hp.learning_rate, "lr_scheduler": make_lr_scheduler(hp, iters), **opt_args},
        **kvstore,
    )


def make_loaders(hp: Hyperparameters, inputs: TrainingInputs, seed: int | None) -> dict[str, Any]:
    """File mode: the train and validation DataLoaders. Pipe mode reads its streams per epoch: none."""
    if inputs.mode != "file":
        return {}
    train_ds = SegmentationDataset(
        inputs.train_samples, inputs.train_label_map, "train", hp.crop_size, hp.base_size, seed=seed
    )
    whole = hp.validation_mini_batch_size == 1
    val_ds = SegmentationDataset(
        inputs.validation_samples,
        inputs.validation_label_map,
        "val_whole" if whole else "val_crop",
        hp.crop_size,
        hp.base_size,
        seed=seed,
    )
    return {
        # rollover keeps every batch full, but a set smaller than one batch would then yield nothing
        "train": make_loader(
            train_ds,
            hp.mini_batch_size,
            shuffle=True,
            seed=seed,
            last_batch="rollover" if len(train_ds) >= hp.mini_batch_size else "keep",
        ),
        "validation": make_loader(val_ds, hp.validation_mini_batch_size, shuffle=False, last_batch="keep", seed=seed),
    }


def checkpoint_folder(env: Environment, primary: bool) -> Path:
    """The checkpoint folder, created on the first host (the only one that writes checkpoints)."""
    ckpt_dir = env.checkpoint_dir
    try:
        if primary:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AlgorithmError(f"Cannot create the checkpoint folder {ckpt_dir}: {exc.strerror or exc}") from None
    return ckpt_dir
