"""The collective interface of the training loop, and its no-op for a single host.

`train()` talks to every other worker through one object: `SingleHost` here (nothing to agree with) or
the KVStore `Cluster` (gluonseg.training.distributed.collectives). Both have the methods of `Collective`,
so the loop has no single-host/multi-host branches.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from gluonseg.training.checkpoint import find_checkpoint, load_checkpoint
from gluonseg.training.schedule import iterations_per_epoch
from gluonseg.training.stopping import StopRequest


class Collective(Protocol):
    """What the training loop asks of the other workers; all of it collective (same calls, same order)."""

    is_primary: bool  # only the first host writes checkpoints and the model
    num_workers: int  # hosts whose gradients are summed, so a step averages over all their images

    def agree_iterations(self, local_samples: int, batch: int) -> int: ...
    def trainer_kvstore(self, ctxs: Any) -> dict[str, Any]: ...
    def resume(self, ckpt_dir: Path, net: Any, trainer: Any, ctxs: Any) -> tuple[Any, dict[str, Any] | None]: ...
    def start(self, net: Any, trainer: Any, ctxs: Any, input_shape: tuple[int, ...]) -> None: ...
    def stop_request(self) -> StopRequest: ...
    def lockstep(self, batches: Iterable, steps: int, stop: Any) -> Iterable: ...
    def finish_epoch(self, net: Any, trainer: Any, ctxs: Any, epoch: int, loss: float) -> float: ...
    def sum_confusion(self, cm: Any) -> Any: ...
    def sum_counts(self, name: str, values: Any) -> Any: ...
    def close(self) -> None: ...


class SingleHost:
    """One host: nothing to agree with, so every collective step returns what it was given."""

    is_primary = True
    num_workers = 1

    def agree_iterations(self, local_samples: int, batch: int) -> int:
        return iterations_per_epoch(local_samples, batch)

    def trainer_kvstore(self, ctxs: Any) -> dict[str, Any]:
        """Several GPUs of one host sum their gradients on the devices; one device needs no KVStore."""
        return {"kvstore": "device" if len(ctxs) > 1 else None, "update_on_kvstore": None}

    def resume(self, ckpt_dir: Path, net: Any, trainer: Any, ctxs: Any) -> tuple[Path | None, dict[str, Any] | None]:
        """This host's newest checkpoint, loaded into `net` and `trainer`: (folder, state), or (None, None)."""
        found = find_checkpoint(ckpt_dir)
        return found, load_checkpoint(found, net, trainer, ctxs) if found is not None else None

    def start(self, net: Any, trainer: Any, ctxs: Any, input_shape: tuple[int, ...]) -> None:
        pass

    def stop_request(self) -> StopRequest:
        return StopRequest()

    def lockstep(self, batches: Iterable, steps: int, stop: StopRequest) -> Iterable:
        return batches

    def finish_epoch(self, net: Any, trainer: Any, ctxs: Any, epoch: int, loss: float) -> float:
        return loss

    def sum_confusion(self, cm: Any) -> Any:
        return cm

    def sum_counts(self, name: str, values: Any) -> Any:
        return values

    def close(self) -> None:
        pass


def connect(resources: Any, num_gpus: int) -> Collective:
    """The collective for this job: the KVStore `Cluster` when resourceconfig.json lists several hosts."""
    if not resources.is_multi_host:
        return SingleHost()
    from gluonseg.training.distributed.collectives import Cluster  # MXNet's dist KVStore, multi-host jobs only

    return Cluster.connect(resources, num_gpus)
