"""Early stopping on validation mIOU, with SageMaker's four knobs (spec §3.3).

Exact rules, where the docs leave room:
- `update(epoch, miou)` is called once after each validated epoch. `epoch` is the 0-based index of the
  epoch just finished (the number in the `#quality_metric: ... epoch=N` lines); epoch + 1 epochs have
  then completed. Epochs must be passed in increasing order.
- Improved: the first score always; afterwards miou > best and the relative gain (miou - best) / best is
  at least `tolerance`. With best == 0 any positive miou is improved (the gain is unbounded). An equal
  score is never an improvement, so with the default tolerance 0 a plateau counts as "not improved".
  A NaN score is "not improved" and never becomes the best.
- "best" is the highest mIOU seen so far, updated even by gains too small to count as improved; so
  tolerance compares with the true best, and `best_epoch`/`best_score` always name the best model.
- Stop (update returns True) once `patience` consecutive epochs were not improved and at least
  `min_epochs` epochs have completed (epoch + 1 >= min_epochs). Disabled: never stops, still tracks best.
"""

from __future__ import annotations

import math
from typing import Any


class EarlyStopping:
    def __init__(self, enabled: bool, min_epochs: int, patience: int, tolerance: float):
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        if min_epochs < 0:
            raise ValueError(f"min_epochs must be non-negative, got {min_epochs}")
        if not 0 <= tolerance <= 1:
            raise ValueError(f"tolerance must be between 0 and 1, got {tolerance}")
        self.enabled = bool(enabled)
        self.min_epochs = int(min_epochs)
        self.patience = int(patience)
        self.tolerance = float(tolerance)
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0  # consecutive "not improved" epochs
        self.last_epoch: int | None = None
        self.is_best = False  # the last update set a new best_score (the trainer saves model_best then)
        self.stopped = False

    @classmethod
    def from_hyperparameters(cls, hp: Any) -> EarlyStopping:
        return cls(
            hp.early_stopping, hp.early_stopping_min_epochs, hp.early_stopping_patience, hp.early_stopping_tolerance
        )

    def _improved(self, miou: float) -> bool:
        if self.best_score is None:
            return True
        if not miou > self.best_score:
            return False
        if self.best_score <= 0:
            return True
        return (miou - self.best_score) / self.best_score >= self.tolerance

    def update(self, epoch: int, miou: float) -> bool:
        """Record the mIOU of the 0-based `epoch` just finished; True means stop training now."""
        epoch = int(epoch)
        if epoch < 0 or (self.last_epoch is not None and epoch <= self.last_epoch):
            raise ValueError(f"epoch {epoch} is not after the last recorded epoch {self.last_epoch}")
        self.last_epoch = epoch
        miou = float(miou)
        valid = not math.isnan(miou)
        if valid and self._improved(miou):
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        self.is_best = valid and (self.best_score is None or miou > self.best_score)
        if self.is_best:
            self.best_score, self.best_epoch = miou, epoch
        self.stopped = self.enabled and self.bad_epochs >= self.patience and epoch + 1 >= self.min_epochs
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable progress (the configuration comes from the hyperparameters on resume)."""
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "last_epoch": self.last_epoch,
            "is_best": self.is_best,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state.get("best_score")
        self.best_score = None if best is None else float(best)
        epoch = state.get("best_epoch")
        self.best_epoch = None if epoch is None else int(epoch)
        self.bad_epochs = int(state.get("bad_epochs", 0))
        last = state.get("last_epoch")
        self.last_epoch = None if last is None else int(last)
        self.is_best = bool(state.get("is_best", False))
        self.stopped = bool(state.get("stopped", False))

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(enabled={self.enabled}, min_epochs={self.min_epochs}, patience={self.patience}, "
            f"tolerance={self.tolerance}, best_score={self.best_score}, best_epoch={self.best_epoch}, "
            f"bad_epochs={self.bad_epochs})"
        )
