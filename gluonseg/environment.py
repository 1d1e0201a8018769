"""Where a SageMaker training or hosting job keeps its files (`/opt/ml`, or `$SAGEMAKER_BASE_DIR`).

Only paths and the config files live here; no ML. Missing config files mean a local,
single-host job (`algo-1`), which is what `docker run IMAGE train` on a laptop looks like.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gluonseg.errors import ClientError

DEFAULT_BASE_DIR = "/opt/ml"
MAX_CONFIG_BYTES = 1 << 20  # config JSON is small; a huge file is a mistake, not data
MAX_JSON_DEPTH = 32  # SageMaker's config files nest 3 levels; label maps 2


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether objects/arrays nest more than `limit` levels; a loop, not recursion, so no depth can crash it."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def read_json_file(
    path: Path, what: str, max_bytes: int = MAX_CONFIG_BYTES, max_depth: int = MAX_JSON_DEPTH, shown: str | None = None
) -> Any:
    """Read a small JSON file, turning every way it can be broken into a ClientError naming it.

    Bounded in bytes (checked on the bytes read, so a pipe or a growing file is bounded too) and in
    nesting depth. Messages name the file (as `shown`, e.g. channel-relative, else its path) and the
    limit, never its contents.
    """
    shown_path = shown if shown is not None else path
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ClientError(f"Cannot read {what} {shown_path}: {exc.strerror}") from None
    if size > max_bytes:
        raise ClientError(f"{what} {shown_path} is {size} bytes; the limit is {max_bytes} bytes")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise ClientError(f"{what} {shown_path} is more than {max_bytes} bytes; the limit is {max_bytes} bytes")
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ClientError(f"Cannot read {what} {shown_path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError as exc:
        raise ClientError(f"Cannot read {what} {shown_path}: not UTF-8 text (byte {exc.start})") from None
    too_deep = f"{what} {shown_path} is nested too deeply: more than {max_depth} levels of objects and arrays"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(
            f"{what} {shown_path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ClientError(too_deep) from None
    if _nested_deeper_than(data, max_depth):
        raise ClientError(too_deep)
    return data


@dataclass(frozen=True)
class ChannelConfig:
    """One entry of `inputdataconfig.json`."""

    name: str
    input_mode: str = "File"
    content_type: str | None = None
    distribution: str = "FullyReplicated"
    record_wrapper: str = "None"

    @property
    def is_pipe(self) -> bool:
        return self.input_mode.lower() == "pipe"


@dataclass(frozen=True)
class ResourceConfig:
    current_host: str = "algo-1"
    hosts: tuple[str, ...] = ("algo-1",)
    network_interface_name: str | None = None
    current_instance_type: str | None = None

    @property
    def is_multi_host(self) -> bool:
        return len(self.hosts) > 1

    @property
    def is_primary(self) -> bool:
        """The first host: the one that writes the model and the checkpoints of a multi-host job."""
        return not self.hosts or self.current_host == self.hosts[0]


@dataclass(frozen=True)
class Environment:
    """The `/opt/ml` tree of one job. The CLI overrides single folders (`--data`, `--model-dir`)."""

    base_dir: Path = field(default_factory=lambda: Path(os.environ.get("SAGEMAKER_BASE_DIR", DEFAULT_BASE_DIR)))
    data_dir_override: Path | None = None
    model_dir_override: Path | None = None
    output_dir_override: Path | None = None
    checkpoint_dir_override: Path | None = None

    # -- paths ---------------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return self.base_dir / "input" / "config"

    @property
    def hyperparameters_path(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def input_data_config_path(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resource_config_path(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def data_dir(self) -> Path:
        return self.data_dir_override or self.base_dir / "input" / "data"

    def channel_dir(self, name: str) -> Path:
        return self.data_dir / name

    def pipe_path(self, name: str, epoch: int) -> Path:
        return self.data_dir / f"{name}_{epoch}"

    @property
    def model_dir(self) -> Path:
        return self.model_dir_override or self.base_dir / "model"

    @property
    def output_dir(self) -> Path:
        return self.output_dir_override or self.base_dir / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_path(self) -> Path:
        return self.output_dir / "failure"

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoint_dir_override or self.base_dir / "checkpoints"

    def check_outputs_writable(self, primary: bool = True) -> None:
        """ClientError naming each folder the job must write that it cannot: output, and on the `primary` host
        (the only one that writes them) model and checkpoints.

        Checked before any work: otherwise a job run as a user that cannot write /opt/ml (the serving image's
        uid 1000, a read-only mount) trains a whole epoch and then dies at its first checkpoint.
        """
        refused = []
        folders = (self.model_dir, self.output_dir, self.checkpoint_dir) if primary else (self.output_dir,)
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                # Permission only: anything else (a file where the folder should be) is reported, with its
                # own message, by the step that writes there.
                if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
                    refused.append(f"{folder} ({exc.strerror or exc})")
                continue
            if not os.access(folder, os.W_OK | os.X_OK):
                refused.append(f"{folder} (not writable)")
        if refused:
            raise ClientError(
                f"cannot write {', '.join(refused)} as uid {os.getuid()}: a training job writes its model, "
                "checkpoints and failure reason there. Run the training image (it runs as root, as SageMaker's "
                "training containers do), or make these folders writable for this user"
            )

    # -- config files --------------------------------------------------------------------
    def raw_hyperparameters(self) -> dict[str, Any]:
        if not self.hyperparameters_path.exists():
            return {}
        data = read_json_file(self.hyperparameters_path, "hyperparameters file")
        if not isinstance(data, dict):
            raise ClientError(f"hyperparameters file {self.hyperparameters_path} must hold a JSON object")
        return data

    def channels(self) -> dict[str, ChannelConfig]:
        """Channels from `inputdataconfig.json`, else every folder under `input/data` in File mode."""
        if self.input_data_config_path.exists():
            data = read_json_file(self.input_data_config_path, "input data config")
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise ClientError(f"input data config {self.input_data_config_path} must map channel names to objects")
            return {
                name: ChannelConfig(
                    name=name,
                    input_mode=str(cfg.get("TrainingInputMode", "File")),
                    content_type=cfg.get("ContentType"),
                    distribution=str(cfg.get("S3DistributionType", "FullyReplicated")),
                    record_wrapper=str(cfg.get("RecordWrapperType", "None")),
                )
                for name, cfg in data.items()
            }
        if not self.data_dir.is_dir():
            return {}
        return {p.name: ChannelConfig(name=p.name) for p in sorted(self.data_dir.iterdir()) if p.is_dir()}

    def resources(self) -> ResourceConfig:
        if not self.resource_config_path.exists():
            return ResourceConfig()
        data = read_json_file(self.resource_config_path, "resource config")
        if not isinstance(data, dict):
            raise ClientError(f"resource config {self.resource_config_path} must hold a JSON object")
        current = str(data.get("current_host", "algo-1"))
        hosts = data.get("hosts") or [current]
        if not isinstance(hosts, list) or current not in hosts:
            raise ClientError(
                f"resource config {self.resource_config_path}: current_host {current!r} is not in hosts {hosts!r}"
            )
        return ResourceConfig(
            current_host=current,
            hosts=tuple(sorted(str(h) for h in hosts)),
            network_interface_name=data.get("network_interface_name"),
            current_instance_type=data.get("current_instance_type"),
        )
