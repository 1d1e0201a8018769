"""The training job: build the network, run epochs, validate, checkpoint, write the model folder.

Data flows one way: TrainingInputs (validated channels) -> batches -> network -> metrics ->
checkpoints and the model folder. Nothing here knows about HTTP or serving. Single-host and multi-host jobs
run the same steps; what differs lives in the job's collective (gluonseg.training.distributed).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import mxnet as mx

from gluonseg import artifacts
from gluonseg.data.check_set import plan_pictures, write_check_set
from gluonseg.data.dataset import SegmentationDataset
from gluonseg.data.inputs import TrainingInputs
from gluonseg.environment import Environment, ResourceConfig
from gluonseg.errors import AlgorithmError
from gluonseg.hyperparameters import Hyperparameters
from gluonseg.training.checkpoint import WEIGHTS, best_params, find_checkpoint
from gluonseg.training.distributed.single_host import connect
from gluonseg.training.early_stopping import EarlyStopping
from gluonseg.training.loop import Job, RunState, best_record, run_epochs
from gluonseg.training.metrics_log import log_best_metrics
from gluonseg.training.setup import (
    build_job_network,
    checkpoint_folder,
    contexts,
    make_loaders,
    make_loss,
    make_trainer,
    reproducible_seed,
)
from gluonseg.training.tensorboard import PICTURES, open_board

log = logging.getLogger("gluonseg.train")


def train(hp: Hyperparameters, inputs: TrainingInputs, env: Environment, resources: ResourceConfig) -> None:
    seed = reproducible_seed()
    ctxs = contexts()
    log.info("devices: %s", ", ".join(str(c) for c in ctxs))
    collective = connect(resources, mx.context.num_gpus())  # one host: a no-op; several: the dist KVStore
    loss_fn, stats = make_loss(hp, inputs, collective)
    net = build_job_network(hp, inputs, ctxs)
    iters = collective.agree_iterations(inputs.num_training_samples, hp.mini_batch_size)
    job = Job(
        hp=hp,
        inputs=inputs,
        env=env,
        ctxs=ctxs,
        collective=collective,
        net=net,
        trainer=make_trainer(hp, net, iters, collective.trainer_kvstore(ctxs)),
        loss_fn=loss_fn,
        class_stats=stats,
        early=EarlyStopping.from_hyperparameters(hp),
        ckpt_dir=checkpoint_folder(env, collective.is_primary),
        iters=iters,
        seed=seed,
        host=resources.current_host,
    )
    resume(job)
    collective.start(net, job.trainer, ctxs, (1, 3, hp.crop_size, hp.crop_size))
    job.loaders = make_loaders(hp, inputs, seed)
    job.board = open_board(hp.tensorboard, collective.is_primary, env.output_dir, hp.num_classes, hp.epochs,
                           board_pictures(inputs))  # fmt: skip
    try:
        run_epochs(job)
    finally:
        if job.board is not None:
            job.board.close()
    write_outputs(job)
    job.trainer = None  # it holds the KVStore, which must be released for ps-lite's clean shutdown
    collective.close()


def board_pictures(inputs: TrainingInputs) -> SegmentationDataset | None:
    """The validation pictures TensorBoard shows each few epochs (File mode; Pipe mode streams them once)."""
    if inputs.mode != "file" or not inputs.validation_samples:
        return None
    samples = inputs.validation_samples[:PICTURES]
    return SegmentationDataset(samples, inputs.validation_label_map, mode="val_whole")


def resume(job: Job) -> None:
    """Continue from the newest checkpoint (on several hosts, the first host's), if there is one."""
    found, saved = job.collective.resume(job.ckpt_dir, job.net, job.trainer, job.ctxs)
    if found is None:
        return
    job.early.load_state_dict(saved["early_stopping"])
    job.state = RunState(saved["epoch"], saved["history"], saved.get("seconds", 0.0))
    log.info("resuming from checkpoint %s: %d epoch(s) done", found, job.state.epoch_done + 1)
    job.finished = bool(saved.get("finished"))
    if job.finished:
        log.info("the checkpoint says training already finished; writing the model folder")


def write_outputs(job: Job) -> None:
    """The summary metric lines, the model folder (first host only) and the metric history."""
    state, early, primary = job.state, job.early, job.collective.is_primary
    last_ckpt = find_checkpoint(job.ckpt_dir) if primary else None
    best_path = best_params(last_ckpt) if last_ckpt is not None else None
    if primary and best_path is None:
        raise AlgorithmError(f"training ended without parameters in {job.ckpt_dir}")
    best = {"best_epoch": early.best_epoch, "best_mIOU": early.best_score, "epochs_run": state.epoch_done + 1}
    final = state.history[-1] if state.history else {}
    if early.best_epoch is not None:  # the saved model's scores last: the value tuning reads
        log_best_metrics(
            log, job.host, early.best_epoch, best_record(state, early).get("pixel_accuracy"), early.best_score
        )
    if primary:
        artifacts.finalize_model_dir(
            job.env.model_dir,
            job.hp,
            best_path,
            last_ckpt / WEIGHTS,
            {**best, "final_epoch_mIOU": final.get("mIOU")},
        )
        artifacts.write_class_stats(job.env.model_dir, job.class_stats)
        keep_check_pictures(job)
    write_history(job.env, state.history)


def keep_check_pictures(job: Job) -> None:
    """A few of the job's pictures in the model folder (gluonseg.data.check_set), so that serving judges
    faster backends on pictures like the user's. Pipe mode has no files to keep."""
    inputs = job.inputs
    if inputs.mode != "file":
        log.info("check pictures: none kept in Pipe mode; serving will judge backends on generated pictures")
        return
    plan = plan_pictures(inputs.validation_samples, inputs.train_samples)
    if not plan.check:
        log.warning("check pictures: none kept (too few pictures)")
        return
    label_map = inputs.validation_label_map if plan.check_source == "validation" else inputs.train_label_map
    dataset = SegmentationDataset(plan.check, label_map, mode="val_whole")
    try:
        folder = write_check_set(
            job.env.model_dir, dataset.load, range(len(plan.check)), [s.image_file for s in plan.check],
            plan.check_source,
        )  # fmt: skip
    except OSError as exc:  # the model itself is written; serving then judges on generated pictures
        log.warning("check pictures: cannot write them into the model folder (%s)", exc)
        return
    log.info("check pictures: %d %s picture(s) kept in %s", len(plan.check), plan.check_source, folder)
    if plan.note:
        log.info("check pictures: %s", plan.note)


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
