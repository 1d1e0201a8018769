"""The epoch loop: train on the agreed number of batches, validate, log, decide on early stopping, checkpoint.

Every step that involves the other hosts goes through the job's collective (a no-op on a single host).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluonseg.data.inputs import TrainingInputs
from gluonseg.data.transforms import train_transform, val_crop_transform, val_whole_transform
from gluonseg.environment import Environment
from gluonseg.errors import AlgorithmError
from gluonseg.hyperparameters import Hyperparameters
from gluonseg.training.checkpoint import save_checkpoint
from gluonseg.training.distributed.single_host import Collective
from gluonseg.training.early_stopping import EarlyStopping
from gluonseg.training.metrics_log import log_epoch_metrics
from gluonseg.training.pipe_batches import pipe_batches
from gluonseg.training.stopping import Stopped, StopRequest
from gluonseg.training.validation import evaluate

log = logging.getLogger("gluonseg.train")


@dataclass
class RunState:
    epoch_done: int = -1  # last completed epoch (0-based)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Job:
    """Everything the epochs share: settings, data, network, optimizer, the other hosts, progress."""

    hp: Hyperparameters
    inputs: TrainingInputs
    env: Environment
    ctxs: list[Any]
    collective: Collective
    net: Any
    trainer: Any
    loss_fn: Any
    early: EarlyStopping
    ckpt_dir: Path
    iters: int
    seed: int | None
    host: str
    class_stats: dict[str, Any] = field(default_factory=dict)  # class_stats.json: pixel shares, weights
    loaders: dict[str, Any] = field(default_factory=dict)
    state: RunState = field(default_factory=RunState)
    finished: bool = False  # the last epoch ran, or early stopping ended the job
    board: Any = None  # gluonseg.training.tensorboard.TrainingBoard, on the first host unless tensorboard=False


def batches_for_epoch(hp, inputs: TrainingInputs, env: Environment, epoch: int, loaders, seed, split: str):
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


def train_one_epoch(
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


def run_epochs(job: Job) -> None:
    """From the epoch after the last checkpoint until the last epoch or early stopping; a SIGTERM stop saves
    a checkpoint and raises Stopped."""
    with job.collective.stop_request() as stop:
        epoch = job.state.epoch_done + 1
        while epoch < job.hp.epochs and not job.finished:
            if job.seed is not None:
                mx.random.seed(job.seed + epoch)
            loss, n_images, seconds = _train_epoch(job, epoch, stop)
            loss = job.collective.finish_epoch(job.net, job.trainer, job.ctxs, epoch, loss)
            record = _validate_epoch(job, epoch, loss, n_images, seconds)
            _end_epoch(job, epoch, record)
            epoch += 1
            if stop.requested and not job.finished:
                log.warning("stopped after epoch %d; checkpoint saved", job.state.epoch_done)
                raise Stopped()


def _train_epoch(job: Job, epoch: int, stop: StopRequest) -> tuple[float, int, float]:
    """One pass over this host's training batches: (mean loss, images, seconds)."""
    batches = batches_for_epoch(job.hp, job.inputs, job.env, epoch, job.loaders, job.seed, "train")
    batches = job.collective.lockstep(batches, job.iters, stop)
    loss, n_images, seconds, interrupted = train_one_epoch(
        job.net,
        job.trainer,
        job.loss_fn,
        batches,
        job.ctxs,
        stop,
        epoch,
        job.iters,
        job.collective.num_workers,
    )
    if interrupted:
        # Weights moved on during the partial epoch: keep them, but the epoch is redone on resume.
        if job.collective.is_primary:
            save_checkpoint(job.ckpt_dir, job.net, job.trainer, state_dict(job.state, job.early))
        log.warning("stopped during epoch %d; checkpoint saved, the epoch restarts on resume", epoch)
        raise Stopped()
    return loss, n_images, seconds


def _validate_epoch(job: Job, epoch: int, loss: float, n_images: int, seconds: float) -> dict[str, Any]:
    """Validate, and the epoch's record for the metric history."""
    hp = job.hp
    val_batches = batches_for_epoch(hp, job.inputs, job.env, epoch, job.loaders, job.seed, "validation")
    cm, val_seconds, val_images = evaluate(
        job.net, val_batches, job.ctxs, hp.num_classes, whole_images=hp.validation_mini_batch_size == 1
    )
    cm = job.collective.sum_confusion(cm)  # every worker sees the same mIOU and takes the same decisions
    return {
        "epoch": epoch,
        "train_loss": loss,
        "train_throughput": n_images / max(seconds, 1e-9),
        "pixel_accuracy": cm.pixel_accuracy(),
        "mIOU": cm.mean_iou(),
        "iou_per_class": [None if math.isnan(v) else float(v) for v in cm.iou_per_class()],
        "validation_throughput": val_images / max(val_seconds, 1e-9),
        "seconds": seconds + val_seconds,
    }


def _end_epoch(job: Job, epoch: int, record: dict[str, Any]) -> None:
    """Record and log the epoch, decide whether training is finished, and checkpoint."""
    state, early = job.state, job.early
    state.history.append(record)
    state.seconds += record["seconds"]
    log_epoch_metrics(
        log,
        job.host,
        epoch,
        train_loss=record["train_loss"],
        train_throughput=record["train_throughput"],
        pixel_accuracy=record["pixel_accuracy"],
        miou=record["mIOU"],
        val_throughput=record["validation_throughput"],
    )
    _to_board(job, epoch, record)
    should_stop = early.update(epoch, record["mIOU"])
    state.epoch_done = epoch
    if should_stop:
        log.info(
            "early stopping after epoch %d: best validation mIOU %.4f at epoch %d",
            epoch,
            early.best_score,
            early.best_epoch,
        )
        job.finished = True
    elif epoch == job.hp.epochs - 1:
        job.finished = True
    if job.collective.is_primary:
        save_checkpoint(
            job.ckpt_dir, job.net, job.trainer, state_dict(state, early, job.finished), is_best=early.is_best
        )


def _to_board(job: Job, epoch: int, record: dict[str, Any]) -> None:
    """The epoch's scalars (and some epochs' pictures) into the TensorBoard event files; never fails the job."""
    if job.board is None:
        return
    try:
        job.board.epoch(record, job.trainer.learning_rate)
        if job.board.wants_pictures(epoch):
            job.board.validation_pictures(epoch, job.net, job.ctxs[0])
    except Exception as exc:  # noqa: BLE001 - event files are a view of training, not training
        log.warning("TensorBoard: stopped writing event files (%s)", exc)
        job.board = None


def best_record(state: RunState, early: EarlyStopping) -> dict[str, Any]:
    for record in state.history:
        if record["epoch"] == early.best_epoch:
            return record
    return {}


def state_dict(state: RunState, early: EarlyStopping, finished: bool = False) -> dict[str, Any]:
    return {
        "epoch": state.epoch_done,
        "history": state.history,
        "seconds": state.seconds,
        "early_stopping": early.state_dict(),
        "finished": finished,
    }
