"""Training throughput: our training loop against a loop written the GluonCV train.py way, same data, crop, batch.

Both loops train FCN-ResNet-50 (aux head, weight 0.5) from scratch with SGD (lr 0.001, momentum 0.9,
wd 1e-4, poly schedule) on the generated dataset, with one data-loader worker process each (what our
loader picks on 2 cores). Each runs `--warmup` iterations untimed (graph set-up, loader start-up), then
`--iterations` timed ones; the two loops take turns every `--chunk` iterations, so load from other
processes on a shared machine falls on both alike.
- ours: gluonseg's SegmentationDataset + loader (seeded per-sample augmentation) and the trainer's own
  epoch loop (`gluonseg.training.loop.train_one_epoch`, loss = gluonseg's SegmentationLoss).
- baseline: a `gluoncv.data.segbase.SegmentationDataset` subclass using its `_sync_transform` with
  ToTensor + Normalize, GluonCV's DataParallelModel/DataParallelCriterion, MixSoftmaxCrossEntropyLoss,
  and train.py's loop body (record, forward, loss, waitall, backward, step, loss.asnumpy()).
The loaders are also timed alone (no network): the data rate the training can draw on.

Run: .venv/bin/python -m benchmarks.training_throughput --data DIR [--crop 128 --batch 8] [--no-record]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from PIL import Image

from benchmarks.common.report import publish
from benchmarks.common.tables import mark
from gluonseg.data.channels import SPLITS, pair_channel
from gluonseg.data.dataset import SegmentationDataset, default_num_workers, make_loader
from gluonseg.data.label_map import load_label_map
from gluonseg.hyperparameters import parse
from gluonseg.models import build_network
from gluonseg.training.loop import train_one_epoch as _train_one_epoch
from gluonseg.training.loss import SegmentationLoss
from gluonseg.training.schedule import iterations_per_epoch, make_lr_scheduler
from gluonseg.training.setup import optimizer_settings
from gluonseg.training.stopping import StopRequest

SEED = 0
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def endless(loader):
    """Batches across epoch boundaries, so a timed run never waits for an epoch to restart mid-count."""
    return itertools.chain.from_iterable(iter(loader) for _ in itertools.count())


class GluonCVStyleDataset:
    """What a GluonCV user writes for a new dataset: VOCSegmentation's __getitem__ on our file lists."""

    def __new__(cls, samples, crop_size: int, base_size: int):
        from gluoncv.data.segbase import SegmentationDataset as GluonCVSegmentation
        from mxnet.gluon.data.vision import transforms

        class Generated(GluonCVSegmentation):
            def __init__(self):
                transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
                super().__init__(".", "train", "train", transform, base_size=base_size, crop_size=crop_size)
                self.images = [str(s.image_path) for s in samples]
                self.masks = [str(s.mask_path) for s in samples]

            def __getitem__(self, index):
                img = Image.open(self.images[index]).convert("RGB")
                mask = Image.open(self.masks[index])
                img, mask = self._sync_transform(img, mask)
                return self.transform(img), mask

            def _mask_transform(self, mask):  # as VOCSegmentation: 255 (boundary) becomes the ignore label -1
                target = np.array(mask).astype("int32")
                target[target == 255] = -1
                return mx.nd.array(target, mx.cpu(0))

            def __len__(self):
                return len(self.images)

        return Generated()


def hyperparameters(num_classes: int, samples: int, crop: int, base: int, batch: int, iterations: int):
    return parse(
        {
            "num_classes": str(num_classes),
            "num_training_samples": str(samples),
            "crop_size": str(crop),
            "base_size": str(base),
            "mini_batch_size": str(batch),
            "epochs": str(max(1, iterations)),
            "optimizer": "sgd",
            "learning_rate": "0.001",
            "momentum": "0.9",
            "weight_decay": "0.0001",
            "lr_scheduler": "poly",
            "use_pretrained_model": "False",
        }
    )


class Clock:
    """Phase timer: each lap waits for MXNet's queue to drain, so a phase's time is its own work."""

    def __init__(self) -> None:
        mx.nd.waitall()
        self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        mx.nd.waitall()
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now


@dataclass
class Loop:
    run: Callable[[int], tuple[int, float]]  # run(n): train n iterations, return (images, seconds)
    phases: Callable[[], dict[str, float]]  # one more iteration, phase by phase (synchronised, so slower)


def our_loop(samples, label_map, hp) -> Loop:
    """Our training loop, ready to run: `run(n)` trains n iterations and returns (images, seconds)."""
    mx.random.seed(SEED)
    ctxs = [mx.cpu()]
    net = build_network("fcn", "resnet-50", hp.num_classes, hp.crop_size, hp.base_size, False, ctx=ctxs, aux=True)
    iters = iterations_per_epoch(len(samples), hp.mini_batch_size)
    name, extra = optimizer_settings(hp)
    trainer = gluon.Trainer(
        net.collect_params(),
        name,
        {"learning_rate": hp.learning_rate, "lr_scheduler": make_lr_scheduler(hp, iters), **extra},
    )
    dataset = SegmentationDataset(samples, label_map, "train", hp.crop_size, hp.base_size, seed=SEED)
    loader = make_loader(dataset, hp.mini_batch_size, shuffle=True, seed=SEED)
    batches = endless(loader)
    stop, loss_fn = StopRequest(), SegmentationLoss()

    def run(count: int) -> tuple[int, float]:
        _, images, seconds, _ = _train_one_epoch(
            net, trainer, loss_fn, itertools.islice(batches, count), ctxs, stop, 0, count
        )
        return images, seconds

    def phases() -> dict[str, float]:
        # The body of _train_one_epoch, one phase at a time.
        clock = Clock()
        data, label = next(batches)
        clock.lap("data")
        parts = gluon.utils.split_and_load(data, ctxs, even_split=False)
        labels = gluon.utils.split_and_load(label, ctxs, even_split=False)
        with autograd.record():
            outputs = [net(x) for x in parts]
            clock.lap("forward")
            losses = [loss_fn(out, y) for out, y in zip(outputs, labels)]
            clock.lap("loss")
        autograd.backward(losses)
        clock.lap("backward")
        trainer.step(data.shape[0])
        clock.lap("optimizer step")
        sum(float(loss.sum().asscalar()) for loss in losses)
        clock.lap("loss to host")
        return clock.laps

    return Loop(run, phases)


def gluoncv_loop(samples, hp) -> Loop:
    """The train.py-style loop, ready to run: `run(n)` trains n iterations and returns (images, seconds)."""
    from gluoncv.loss import MixSoftmaxCrossEntropyLoss
    from gluoncv.model_zoo import FCN
    from gluoncv.utils.lr_scheduler import LRScheduler
    from gluoncv.utils.parallel import DataParallelCriterion, DataParallelModel

    mx.random.seed(SEED)
    ctx_list = [mx.cpu()]
    model = FCN(hp.num_classes, backbone="resnet50", aux=True, pretrained_base=False, crop_size=hp.crop_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "already initialized" for the heads GluonCV initialises itself
        model.collect_params().initialize(mx.init.MSRAPrelu(), ctx=ctx_list)
    evaluator = DataParallelModel(model, ctx_list)
    criterion = DataParallelCriterion(MixSoftmaxCrossEntropyLoss(True, aux_weight=0.5), ctx_list)
    dataset = GluonCVStyleDataset(samples, hp.crop_size, hp.base_size)
    loader = gluon.data.DataLoader(
        dataset, hp.mini_batch_size, shuffle=True, last_batch="rollover", num_workers=default_num_workers()
    )
    iters = iterations_per_epoch(len(samples), hp.mini_batch_size)
    schedule = LRScheduler(mode="poly", base_lr=hp.learning_rate, nepochs=hp.epochs, iters_per_epoch=iters, power=0.9)
    optimizer = gluon.Trainer(
        model.collect_params(),
        "sgd",
        {"lr_scheduler": schedule, "wd": 1e-4, "momentum": 0.9, "multi_precision": True},
    )
    batches = endless(loader)

    def phases() -> dict[str, float]:
        clock = Clock()
        data, target = next(batches)
        clock.lap("data")
        with autograd.record(True):
            outputs = evaluator(data.astype("float32", copy=False))
            clock.lap("forward")
            losses = criterion(outputs, target)
            clock.lap("loss")
            autograd.backward(losses)
            clock.lap("backward")
        optimizer.step(hp.mini_batch_size)
        clock.lap("optimizer step")
        [np.mean(loss.asnumpy()) for loss in losses]
        clock.lap("loss to host")
        return clock.laps

    def run(count: int) -> tuple[int, float]:
        images, start, train_loss = 0, time.perf_counter(), 0.0
        for data, target in itertools.islice(batches, count):
            with autograd.record(True):
                outputs = evaluator(data.astype("float32", copy=False))
                losses = criterion(outputs, target)
                mx.nd.waitall()
                autograd.backward(losses)
            optimizer.step(hp.mini_batch_size)
            for loss in losses:
                train_loss += np.mean(loss.asnumpy()) / len(losses)
            images += data.shape[0]
        return images, time.perf_counter() - start

    return Loop(run, phases)


def interleaved(loops: dict[str, Loop], warmup: int, iterations: int, chunk: int):
    """Warm every loop up, then time them in alternating chunks (A B B A ...), so that load from other
    processes on a shared machine falls on both loops alike rather than on whichever ran second."""
    for loop in loops.values():
        loop.run(warmup)
        mx.nd.waitall()
    totals = {name: [0, 0.0] for name in loops}
    names = list(loops)
    done, round_index = 0, 0
    while done < iterations:
        count = min(chunk, iterations - done)
        for name in names if round_index % 2 == 0 else reversed(names):
            # MXNet runs asynchronously: a loop returns while its last backward pass and update are still
            # queued. Drain the queue on both sides of the timing, so that work is charged to its own loop.
            mx.nd.waitall()
            start = time.perf_counter()
            images, _ = loops[name].run(count)
            mx.nd.waitall()
            seconds = time.perf_counter() - start
            totals[name][0] += images
            totals[name][1] += seconds
        done += count
        round_index += 1
    return {name: {"images": i, "seconds": t, "images_per_s": i / t} for name, (i, t) in totals.items()}


def phase_table(medians: dict[str, dict[str, float]], iterations: int) -> list[str]:
    if not medians:
        return []
    phases = list(next(iter(medians.values())))
    lines = [
        f"Profile: one iteration phase by phase (MXNet's queue drained after each phase; median of {iterations} "
        "iterations per loop, the loops alternating), seconds:",
        "",
        "| loop | " + " | ".join(phases) + " | total |",
        "| --- |" + " --- |" * (len(phases) + 1),
    ]
    names = {"ours": "gluonseg (ours)", "baseline": "GluonCV train.py way"}
    for name, row in medians.items():
        lines.append(
            f"| {names[name]} | " + " | ".join(f"{row[p]:.3f}" for p in phases) + f" | {sum(row.values()):.3f} |"
        )
    return [*lines, ""]


def time_loader(loader, batches: int) -> dict[str, float]:
    stream = endless(loader)
    next(stream)  # worker start-up is not the steady rate
    images, start = 0, time.perf_counter()
    for data, _ in itertools.islice(stream, batches):
        images += data.shape[0]
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a generated dataset (gluonseg make-dataset)")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--base", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=2, help="iterations per turn when the loops alternate")
    parser.add_argument("--loader-batches", type=int, default=30)
    parser.add_argument("--profile-iterations", type=int, default=4, help="synchronised iterations per loop")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    image_dir, mask_dir = SPLITS["train"]
    samples = pair_channel(args.data / image_dir, args.data / mask_dir)
    label_map_dir = args.data / "label_map"
    label_map = load_label_map(label_map_dir if label_map_dir.is_dir() else None, "train")
    num_classes = len(json.loads((args.data / "classes.json").read_text()))
    hp = hyperparameters(num_classes, len(samples), args.crop, args.base, args.batch, args.iterations)

    loops = {"ours": our_loop(samples, label_map, hp), "baseline": gluoncv_loop(samples, hp)}
    timed = interleaved(loops, args.warmup, args.iterations, args.chunk)
    ours, baseline = timed["ours"], timed["baseline"]
    # Where an iteration's time goes: alternate single synchronised iterations, median per phase.
    samples_by_loop: dict[str, list[dict[str, float]]] = {name: [] for name in loops}
    for i in range(args.profile_iterations):
        for name in loops if i % 2 == 0 else reversed(list(loops)):
            samples_by_loop[name].append(loops[name].phases())
    phase_medians = {
        name: {phase: float(np.median([p[phase] for p in runs])) for phase in runs[0]}
        for name, runs in samples_by_loop.items()
        if runs
    }
    our_loader = make_loader(
        SegmentationDataset(samples, label_map, "train", args.crop, args.base, seed=SEED), args.batch, True, seed=SEED
    )
    loader_ours = time_loader(our_loader, args.loader_batches)
    gluoncv_loader = gluon.data.DataLoader(
        GluonCVStyleDataset(samples, args.crop, args.base),
        args.batch,
        shuffle=True,
        last_batch="rollover",
        num_workers=default_num_workers(),
    )
    loader_gluoncv = time_loader(gluoncv_loader, args.loader_batches)

    from benchmarks.machine_limit import load_results, model_macs

    limit = load_results()
    macs = model_macs("fcn", args.crop, args.crop, args.crop, aux=True)[0]
    # One process with a thread per core: its limit is cores x the 1-thread roof (see benchmarks.machine_limit).
    roof = limit["cores"] * limit["roof"]["1"]["fp32"] if limit else None

    def gmacs(rate: float) -> str:
        # Forward + backward is about 3x the forward MACs (input and weight gradients each cost one forward).
        achieved = 3 * macs * rate / 1e9
        return f"{achieved:.1f}" + (f" ({achieved / roof:.0%} of {roof:.0f})" if roof else "")

    ratio = ours["images_per_s"] / baseline["images_per_s"]
    feed = loader_ours["images_per_s"] / ours["images_per_s"]
    lines = [
        f"FCN-ResNet-50 from scratch, generated dataset ({len(samples)} training pairs, {num_classes} classes), "
        f"crop {args.crop}, base_size {args.base}, batch {args.batch}, SGD; {args.warmup} warm-up + "
        f"{args.iterations} timed iterations per loop, the two loops taking turns every {args.chunk} iterations "
        f"(A B B A ...); {default_num_workers()} loader worker process(es); seed {SEED}.",
        "",
        "| loop | images | seconds | images/s | ratio to baseline | achieved GMAC/s (3x forward MACs; % of roof) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| gluonseg (ours) | {ours['images']} | {ours['seconds']:.1f} | {ours['images_per_s']:.2f} | {ratio:.2f}x | "
        f"{gmacs(ours['images_per_s'])} |",
        f"| GluonCV train.py way (baseline) | {baseline['images']} | {baseline['seconds']:.1f} | "
        f"{baseline['images_per_s']:.2f} | 1.00x | {gmacs(baseline['images_per_s'])} |",
        "",
        *phase_table(phase_medians, args.profile_iterations),
        "| data loader alone | images | seconds | images/s | ratio to our loop's consumption |",
        "| --- | --- | --- | --- | --- |",
        f"| gluonseg loader | {loader_ours['images']} | {loader_ours['seconds']:.2f} | "
        f"{loader_ours['images_per_s']:.1f} | {feed:.1f}x |",
        f"| GluonCV-style loader | {loader_gluoncv['images']} | {loader_gluoncv['seconds']:.2f} | "
        f"{loader_gluoncv['images_per_s']:.1f} | {loader_gluoncv['images_per_s'] / ours['images_per_s']:.1f}x |",
        "",
        f"Targets: training >= 1.0x the baseline loop: {mark(ratio >= 1.0)} ({ratio:.2f}x); "
        f"data loader alone >= 3x the rate the model consumes: {mark(feed >= 3)} ({feed:.1f}x).",
    ]
    publish("training-throughput", "\n".join(lines), not args.no_record)


if __name__ == "__main__":
    main()
