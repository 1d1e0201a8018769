"""Per-iteration learning-rate schedules (`lr_scheduler` = poly | cosine | step) for gluon.Trainer.

Iteration counting. MXNet's optimizer increments `num_update` *before* asking the scheduler, so the
k-th `trainer.step` (1-based) is priced at `scheduler(k)`. We use t = num_update - 1, the number of
updates finished before the current one, clamped to [0, T] with T = epochs * iters_per_epoch:
- the first update runs at the full base LR (t = 0);
- `step`: an update runs at base * factor**k where k counts the listed epochs e with t >= e * iters_per_epoch,
  i.e. the factor applies from the first update of epoch e + 1 (1-based), "after epoch e";
- poly: base * (1 - t/T) ** 0.9 (GluonCV's segmentation power); cosine: base * (1 + cos(pi * t/T)) / 2.
GluonCV's own poly uses t = num_update, one iteration later; the difference is a single step.

Each schedule is a pure function of num_update (no counters), so a resumed run only needs the optimizer's
`num_update` restored (e.g. `begin_num_update=completed_updates`) to continue the same curve. The only
attribute MXNet writes is `base_lr` (the optimizer copies its `learning_rate` into it), which we read on
every call for that reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from mxnet import lr_scheduler as mx_lr

from gluonseg.errors import ClientError

log = logging.getLogger(__name__)

POLY_POWER = 0.9


def iterations_per_epoch(num_samples: int, batch: int) -> int:
    """ceil(num_samples / batch): the last, partial batch is an iteration too."""
    if num_samples < 1 or batch < 1:
        raise ValueError(f"num_samples and batch must be positive, got {num_samples} and {batch}")
    return -(-int(num_samples) // int(batch))


class IterationSchedule(mx_lr.LRScheduler):
    """Base: holds base_lr and the total number of iterations T; subclasses define `lr_at(t)`."""

    def __init__(self, base_lr: float, total_iterations: int):
        super().__init__(base_lr=base_lr)
        if total_iterations < 1:
            raise ValueError(f"total_iterations must be positive, got {total_iterations}")
        self.total_iterations = int(total_iterations)

    def position(self, num_update: int) -> int:
        """t for MXNet's num_update: updates completed before this one, clamped to [0, T]."""
        return min(max(int(num_update) - 1, 0), self.total_iterations)

    def lr_at(self, t: int) -> float:
        raise NotImplementedError

    def __call__(self, num_update: int) -> float:
        return self.lr_at(self.position(num_update))


class PolySchedule(IterationSchedule):
    def __init__(self, base_lr: float, total_iterations: int, power: float = POLY_POWER):
        super().__init__(base_lr, total_iterations)
        self.power = float(power)

    def lr_at(self, t: int) -> float:
        return self.base_lr * (1.0 - t / self.total_iterations) ** self.power

    def __repr__(self) -> str:
        return f"PolySchedule(base_lr={self.base_lr}, total_iterations={self.total_iterations}, power={self.power})"


class CosineSchedule(IterationSchedule):
    def lr_at(self, t: int) -> float:
        return self.base_lr * (1.0 + math.cos(math.pi * t / self.total_iterations)) / 2.0

    def __repr__(self) -> str:
        return f"CosineSchedule(base_lr={self.base_lr}, total_iterations={self.total_iterations})"


class StepSchedule(IterationSchedule):
    """base * factor ** (number of step epochs already finished)."""

    def __init__(
        self, base_lr: float, total_iterations: int, iters_per_epoch: int, step_epochs: Sequence[int], factor: float
    ):
        super().__init__(base_lr, total_iterations)
        if iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be positive, got {iters_per_epoch}")
        self.iters_per_epoch = int(iters_per_epoch)
        self.step_epochs = tuple(int(e) for e in step_epochs)
        self.factor = float(factor)
        # Boundaries in iterations, precomputed once; never mutated afterwards.
        self._boundaries = tuple(e * self.iters_per_epoch for e in self.step_epochs)

    def lr_at(self, t: int) -> float:
        k = sum(1 for b in self._boundaries if t >= b)
        return self.base_lr * self.factor**k

    def __repr__(self) -> str:
        return (
            f"StepSchedule(base_lr={self.base_lr}, total_iterations={self.total_iterations}, "
            f"iters_per_epoch={self.iters_per_epoch}, step_epochs={self.step_epochs}, factor={self.factor})"
        )


def make_lr_scheduler(hp: Any, iters_per_epoch: int | None = None) -> IterationSchedule:
    """The schedule named by `hp.lr_scheduler`.

    `iters_per_epoch` defaults to ceil(num_training_samples / mini_batch_size); pass it when the trainer
    knows better (e.g. the real number of batches per host).
    """
    if iters_per_epoch is None:
        iters_per_epoch = iterations_per_epoch(hp.num_training_samples, hp.mini_batch_size)
    total = int(hp.epochs) * int(iters_per_epoch)
    name = hp.lr_scheduler
    if name == "poly":
        return PolySchedule(hp.learning_rate, total)
    if name == "cosine":
        return CosineSchedule(hp.learning_rate, total)
    if name == "step":
        steps = hp.lr_scheduler_step
        if not steps:
            raise ClientError("The 'lr_scheduler_step' hyperparameter is required when 'lr_scheduler' is 'step'")
        late = [e for e in steps if e >= hp.epochs]
        if late:
            log.warning(
                "lr_scheduler_step epochs %s are not before the last epoch (%d); they never apply", late, hp.epochs
            )
        return StepSchedule(hp.learning_rate, total, iters_per_epoch, steps, hp.lr_scheduler_factor)
    raise ClientError(
        f"The value '{name}' is not valid for the 'lr_scheduler' hyperparameter which accepts "
        "one of the following: 'step', 'poly', 'cosine'"
    )
