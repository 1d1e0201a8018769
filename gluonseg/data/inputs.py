"""Resolve a job's training inputs from its channels, and validate them before any model is built."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from gluonseg.data.channels import (
    SPLITS,
    ClassPixels,
    Sample,
    pair_channel,
    required_channels_present,
    scan_masks,
)
from gluonseg.data.label_map import LabelMap, load_label_map
from gluonseg.data.sharding import pair_host_shard, split_for_host
from gluonseg.environment import ChannelConfig, Environment, ResourceConfig
from gluonseg.errors import ClientError
from gluonseg.hyperparameters import Hyperparameters

log = logging.getLogger(__name__)

PIPE_CHANNELS = ("train", "validation")


@dataclass
class TrainingInputs:
    """Everything the trainer reads: File-mode sample lists or Pipe-mode channel names, and label maps."""

    mode: str  # "file" | "pipe"
    train_label_map: LabelMap
    validation_label_map: LabelMap
    train_samples: list[Sample] = field(default_factory=list)
    validation_samples: list[Sample] = field(default_factory=list)
    num_training_samples: int = 0
    model_channel: Path | None = None  # incremental training: folder holding the previous model.tar.gz
    # The scan's training-mask counts (File mode); `train_pixels_per_host`: this host scanned only its own
    # shard (ShardedByS3Key on several hosts), so the job's counts are the sum over hosts.
    train_pixels: ClassPixels | None = None
    train_pixels_per_host: bool = False


def _channel_configs(env: Environment) -> dict[str, ChannelConfig]:
    configs = env.channels()
    # inputdataconfig.json may be absent locally; folders then count as File-mode channels.
    for name in (*[c for pair in SPLITS.values() for c in pair], "label_map", "model"):
        if name not in configs and env.channel_dir(name).is_dir():
            configs[name] = ChannelConfig(name=name)
    return configs


def resolve_inputs(env: Environment, hp: Hyperparameters, resources: ResourceConfig | None = None) -> TrainingInputs:
    """Find, pair and scan the training data; raise ClientError for anything wrong with it.

    With several hosts in `resources`, each host keeps its own share (gluonseg.data.sharding).
    """
    configs = _channel_configs(env)
    multi_host = resources is not None and resources.is_multi_host
    label_dir = env.channel_dir("label_map") if "label_map" in configs else None
    if label_dir is not None and not label_dir.is_dir():
        label_dir = None
    maps = {split: load_label_map(label_dir, split, hp.num_classes) for split in SPLITS}
    model_channel = env.channel_dir("model") if "model" in configs and env.channel_dir("model").is_dir() else None

    pipe = [name for name in PIPE_CHANNELS if name in configs and configs[name].is_pipe]
    if pipe:
        if multi_host:
            raise ClientError("Pipe mode trains on a single instance; use File mode for a job with instance_count > 1")
        if set(pipe) != set(PIPE_CHANNELS):
            raise ClientError(
                "Pipe mode needs both 'train' and 'validation' in Pipe mode (augmented manifests); "
                f"only {', '.join(pipe)} is"
            )
        log.info("Pipe mode: reading augmented-manifest RecordIO streams train_<epoch>, validation_<epoch>")
        return TrainingInputs(
            "pipe",
            maps["train"],
            maps["validation"],
            num_training_samples=hp.num_training_samples,
            model_channel=model_channel,
        )

    required_channels_present(configs)
    samples: dict[str, list[Sample]] = {}
    problems: list[str] = []  # both splits are checked, so one failure lists every unusable file
    train_pixels = None
    for split, (image_channel, mask_channel) in SPLITS.items():
        start = time.perf_counter()
        try:
            if multi_host and configs[image_channel].distribution == "ShardedByS3Key":
                pairs = pair_host_shard(env.channel_dir(image_channel), env.channel_dir(mask_channel))
            else:
                pairs = pair_channel(env.channel_dir(image_channel), env.channel_dir(mask_channel))
            result = scan_masks(pairs, maps[split], hp.num_classes, mask_channel)
        except ClientError as exc:
            problems.append(str(exc))
            continue
        seconds = time.perf_counter() - start
        present = result.classes_present(hp.num_classes)
        missing = [c for c in range(hp.num_classes) if c not in present]
        log.info("%s: %d image/mask pairs checked in %.2f s; classes present: %s", split, len(pairs), seconds, present)
        if missing and split == "train":
            log.warning("train: class(es) %s never appear in the training masks; their IoU will stay 0", missing)
        samples[split] = pairs
        if split == "train":
            train_pixels = result.class_counts(hp.num_classes)
    if problems:
        raise ClientError("; ".join(problems))

    count = len(samples["train"])
    sharded = multi_host and configs["train"].distribution == "ShardedByS3Key"  # then a host sees only its share
    if hp.num_training_samples != count and not sharded:
        log.warning(
            "num_training_samples=%d but the train channel holds %d images; using %d",
            hp.num_training_samples,
            count,
            count,
        )
    if multi_host:
        for split, (image_channel, _) in SPLITS.items():
            samples[split] = split_for_host(samples[split], configs[image_channel].distribution, resources)
        log.info(
            "host %s: %d training and %d validation pairs are its share",
            resources.current_host,
            len(samples["train"]),
            len(samples["validation"]),
        )
    return TrainingInputs(
        "file",
        maps["train"],
        maps["validation"],
        samples["train"],
        samples["validation"],
        num_training_samples=len(samples["train"]),
        model_channel=model_channel,
        train_pixels=train_pixels,
        train_pixels_per_host=sharded,
    )
