"""The training job: build the network, run epochs, validate, checkpoint, write the model folder.

Data flows one way: TrainingInputs (validated channels) -> batches -> network -> metrics ->
checkpoints and the model folder. Nothing here knows about HTTP or serving.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluonseg import artifacts
from gluonseg.data.dataset import SegmentationDataset, make_loader
from gluonseg.data.inputs import TrainingInputs
from gluonseg.data.transforms import train_transform, val_crop_transform, val_whole_transform
from gluonseg.environment import Environment, ResourceConfig
from gluonseg.errors import AlgorithmError, ClientError
from gluonseg.hyperparameters import Hyperparameters
from gluonseg.models import build_network
from gluonseg.training.checkpoint import WEIGHTS, best_params, find_checkpoint, load_checkpoint, save_checkpoint
from gluonseg.training.early_stopping import EarlyStopping
from gluonseg.training.loss import SegmentationLoss
from gluonseg.training.metrics_log import log_epoch_metrics
from gluonseg.training.pipe_batches import pipe_batches
from gluonseg.training.schedule import iterations_per_epoch, make_lr_scheduler
from gluonseg.training.validation import evaluate

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


class StopRequest:
    """SIGTERM (StopTrainingJob, Spot interruption) sets a flag; the loop stops at the next batch."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        def handler(signum, frame):
            log.warning("SIGTERM received: stopping at the next safe point and saving a checkpoint")
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (tests calling train() from a thread)
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Stopped(Exception):
    """Raised after a SIGTERM checkpoint; the entry point exits without writing a failure."""


@dataclass
class RunState:
    epoch_done: int = -1  # last completed epoch (0-based)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    mx.random.seed(seed)


def _batches_for_epoch(hp, inputs: TrainingInputs, env: Environment, epoch: int, loaders, seed, split: str):
    if inputs.mode == "file":
        loader = loaders[split]
        loader.set_epoch(epoch)
        return loader
    rng = np.random.default_rng(None if seed is None else [seed, epoch, 0 if split == "train" else 1])
    if split == "train":
        lm, batch = inputs.train_label_map, hp.mini_batch_size

        def transform(image, mask, r):
            return train_transform(image, mask, hp.crop_size, hp.base_size, r)
    else:
        lm, batch = inputs.validation_label_map, hp.validation_mini_batch_size
        if batch == 1:

            def transform(image, mask, r):
                return val_whole_transform(image, mask)
        else:

            def transform(image, mask, r):
                return val_crop_transform(image, mask, hp.crop_size)

    return pipe_batches(env.pipe_path(split, epoch), lm, transform, batch, rng)


def _make_loaders(hp, inputs: TrainingInputs, seed):
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


def _train_one_epoch(
    net, trainer, loss_fn, batches: Iterable, ctxs, stop: StopRequest, epoch: int, total_iters: int, workers: int = 1
) -> tuple[float, int, float, bool]:
    """Returns (mean loss, images, seconds, interrupted).

    workers: hosts whose gradients the KVStore sums (multi-host jobs), so the step averages over all their images.
    """
    loss_sum, images, steps = 0.0, 0, 0
    start = time.perf_counter()
    log_every = max(1, total_iters // 5)
    for data, label in batches:
        if stop.requested:
            return loss_sum / max(steps, 1), images, time.perf_counter() - start, True
        parts = gluon.utils.split_and_load(data, ctxs, even_split=False)
        labels = gluon.utils.split_and_load(label, ctxs, even_split=False)
        with autograd.record():
            losses = [loss_fn(net(x), y) for x, y in zip(parts, labels)]
        autograd.backward(losses)
        trainer.step(data.shape[0] * workers)
        batch_loss = sum(float(loss.sum().asscalar()) for loss in losses) / data.shape[0]
        if not math.isfinite(batch_loss):
            raise AlgorithmError(
                f"the training loss became {batch_loss} at epoch {epoch}, batch {steps}; " "lower learning_rate"
            )
        loss_sum += batch_loss
        images += data.shape[0]
        steps += 1
        if steps % log_every == 0 or steps == total_iters:
            elapsed = time.perf_counter() - start
            eta = elapsed / steps * max(total_iters - steps, 0)
            log.info(
                "epoch %d batch %d/%d loss %.4f lr %.3g %.1f img/s ETA %.0fs",
                epoch,
                steps,
                total_iters,
                loss_sum / steps,
                trainer.learning_rate,
                images / max(elapsed, 1e-9),
                eta,
            )
    return loss_sum / max(steps, 1), images, time.perf_counter() - start, False


def _build(hp: Hyperparameters, **kwargs: Any) -> gluon.HybridBlock:
    log.info("building %s on %s (%d classes, crop %d)", hp.algorithm, hp.backbone, hp.num_classes, hp.crop_size)
    return build_network(hp.algorithm, hp.backbone, hp.num_classes, hp.crop_size, hp.base_size, **kwargs)


def write_history(env: Environment, history: list[dict[str, Any]]) -> None:
    out = env.output_data_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(history, indent=1))
    except OSError as exc:
        log.warning("cannot write the metric history to %s: %s", out, exc)
        return
    try:
        from gluonseg.plots import plot_history

        plot_history(history, out / "training_curves.png")
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished training job
        log.warning("cannot draw the training curves: %s", exc)


def train(hp: Hyperparameters, inputs: TrainingInputs, env: Environment, resources: ResourceConfig) -> None:
    seed = seed_from_env()
    if seed is not None:
        _seed_everything(seed)
        log.info("reproducible mode: GLUONSEG_SEED=%d", seed)
    ctxs = contexts()
    log.info("devices: %s", ", ".join(str(c) for c in ctxs))
    cluster = None  # multi-host jobs: the dist KVStore and its collective steps (gluonseg.training.distributed)
    if resources.is_multi_host:
        from gluonseg.training.distributed import Cluster

        cluster = Cluster.connect(resources, mx.context.num_gpus())
    primary = cluster is None or cluster.is_primary  # only the first host writes checkpoints and the model
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
        net = _build(hp, pretrained_backbone=hp.use_pretrained_model, **build)
    else:
        with artifacts.model_source(inputs.model_channel) as previous:
            artifacts.check_compatible(previous.hp, hp)
            log.info("incremental training from %s", previous.params_path)
            net = _build(hp, pretrained_backbone=False, **build)
            net.load_parameters(str(previous.params_path), ctx=ctxs, allow_missing=False, ignore_extra=True)

    iters = iterations_per_epoch(inputs.num_training_samples, hp.mini_batch_size)
    if cluster is not None:
        iters = cluster.agree_iterations(len(inputs.train_samples), hp.mini_batch_size)
    opt_name, opt_args = optimizer_settings(hp)
    trainer = gluon.Trainer(
        net.collect_params(),
        opt_name,
        {"learning_rate": hp.learning_rate, "lr_scheduler": make_lr_scheduler(hp, iters), **opt_args},
        kvstore=cluster.kvstore if cluster is not None else "device" if len(ctxs) > 1 else None,
        # Multi-host: servers only sum gradients and each worker runs the optimizer and its schedule itself.
        update_on_kvstore=False if cluster is not None else None,
    )
    loss_fn = SegmentationLoss()
    early = EarlyStopping.from_hyperparameters(hp)
    state = RunState()
    ckpt_dir = env.checkpoint_dir
    try:
        if primary:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AlgorithmError(f"Cannot create the checkpoint folder {ckpt_dir}: {exc.strerror or exc}") from None

    finished = False
    if cluster is None:
        found = find_checkpoint(ckpt_dir)
        saved = load_checkpoint(found, net, trainer, ctxs) if found is not None else None
    else:
        found, saved = cluster.resume(ckpt_dir, net, trainer, ctxs)
    if found is not None:
        early.load_state_dict(saved["early_stopping"])
        state = RunState(saved["epoch"], saved["history"], saved.get("seconds", 0.0))
        log.info("resuming from checkpoint %s: %d epoch(s) done", found, state.epoch_done + 1)
        finished = bool(saved.get("finished"))
        if finished:
            log.info("the checkpoint says training already finished; writing the model folder")

    if cluster is not None:
        cluster.start(net, trainer, ctxs, (1, 3, hp.crop_size, hp.crop_size))
    loaders = _make_loaders(hp, inputs, seed)
    host = resources.current_host
    with cluster.stop_request() if cluster is not None else StopRequest() as stop:
        epoch = state.epoch_done + 1
        while epoch < hp.epochs and not finished:
            if seed is not None:
                mx.random.seed(seed + epoch)
            batches = _batches_for_epoch(hp, inputs, env, epoch, loaders, seed, "train")
            if cluster is not None:
                batches = cluster.lockstep(batches, iters, stop)
            loss, n_images, seconds, interrupted = _train_one_epoch(
                net, trainer, loss_fn, batches, ctxs, stop, epoch, iters, 1 if cluster is None else cluster.num_workers
            )
            if interrupted:
                # Weights moved on during the partial epoch: keep them, but the epoch is redone on resume.
                if primary:
                    save_checkpoint(ckpt_dir, net, trainer, _state_dict(state, early))
                log.warning("stopped during epoch %d; checkpoint saved, the epoch restarts on resume", epoch)
                raise Stopped()
            if cluster is not None:
                loss = cluster.finish_epoch(net, trainer, ctxs, epoch, loss)
            val_batches = _batches_for_epoch(hp, inputs, env, epoch, loaders, seed, "validation")
            cm, val_seconds, val_images = evaluate(
                net, val_batches, ctxs, hp.num_classes, whole_images=hp.validation_mini_batch_size == 1
            )
            if cluster is not None:
                cm = cluster.sum_confusion(cm)  # every worker sees the same mIOU and takes the same decisions
            record = {
                "epoch": epoch,
                "train_loss": loss,
                "train_throughput": n_images / max(seconds, 1e-9),
                "pixel_accuracy": cm.pixel_accuracy(),
                "mIOU": cm.mean_iou(),
                "iou_per_class": [None if math.isnan(v) else float(v) for v in cm.iou_per_class()],
                "validation_throughput": val_images / max(val_seconds, 1e-9),
                "seconds": seconds + val_seconds,
            }
            state.history.append(record)
            state.seconds += seconds + val_seconds
            log_epoch_metrics(
                log,
                host,
                epoch,
                train_loss=loss,
                train_throughput=record["train_throughput"],
                pixel_accuracy=record["pixel_accuracy"],
                miou=record["mIOU"],
                val_throughput=record["validation_throughput"],
            )
            should_stop = early.update(epoch, record["mIOU"])
            state.epoch_done = epoch
            if should_stop:
                log.info(
                    "early stopping after epoch %d: best validation mIOU %.4f at epoch %d",
                    epoch,
                    early.best_score,
                    early.best_epoch,
                )
                finished = True
            elif epoch == hp.epochs - 1:
                finished = True
            if primary:
                save_checkpoint(ckpt_dir, net, trainer, _state_dict(state, early, finished), is_best=early.is_best)
            epoch += 1
            if stop.requested and not finished:
                log.warning("stopped after epoch %d; checkpoint saved", state.epoch_done)
                raise Stopped()

    last_ckpt = find_checkpoint(ckpt_dir) if primary else None
    best_path = best_params(last_ckpt) if last_ckpt is not None else None
    if primary and best_path is None:
        raise AlgorithmError(f"training ended without parameters in {ckpt_dir}")
    best = {"best_epoch": early.best_epoch, "best_mIOU": early.best_score, "epochs_run": state.epoch_done + 1}
    final = state.history[-1] if state.history else {}
    log_epoch_metrics(
        log,
        host,
        state.epoch_done,
        pixel_accuracy=_best_record(state, early).get("pixel_accuracy"),
        miou=early.best_score,
    )
    if primary:
        artifacts.finalize_model_dir(
            env.model_dir, hp, best_path, last_ckpt / WEIGHTS, {**best, "final_epoch_mIOU": final.get("mIOU")}
        )
    write_history(env, state.history)
    if cluster is not None:
        del trainer  # it holds the KVStore, which must be released for ps-lite's clean shutdown
        cluster.close()


def _best_record(state: RunState, early: EarlyStopping) -> dict[str, Any]:
    for record in state.history:
        if record["epoch"] == early.best_epoch:
            return record
    return {}


def _state_dict(state: RunState, early: EarlyStopping, finished: bool = False) -> dict[str, Any]:
    return {
        "epoch": state.epoch_done,
        "history": state.history,
        "seconds": state.seconds,
        "early_stopping": early.state_dict(),
        "finished": finished,
    }
