"""Hyperparameters the AWS docs use only under a condition on another one, and what gluonseg does then.

The docs say, e.g., that `lr_scheduler_step` is "Conditionally Required if lr_scheduler is set to step.
Otherwise, ignored." A value left over in a tuning job's static hyperparameters is common, so a value
given while its condition is false is ignored with one log line, even an invalid one (it is replaced by
the default then). Where the docs state a type or range without a condition, that check is kept
(`still_checked="type"`). Each schema entry carries its `Condition`, with the docs' sentence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("gluonseg.hyperparameters")


@dataclass(frozen=True)
class Condition:
    """The value is used only while hyperparameter `on` is one of `values`.

    `source` quotes the docs; `decision` says what gluonseg does with a value given otherwise.
    """

    on: str
    values: tuple[Any, ...]
    source: str
    decision: str = "Ignored, even if invalid, otherwise."
    still_checked: str = "nothing"  # "nothing" | "type": the docs' type holds whatever the condition

    def holds(self, values: Mapping[str, Any]) -> bool:
        return values.get(self.on) in self.values

    def describe(self) -> str:
        """`lr_scheduler is 'step'`, `optimizer is 'sgd' or 'nag'`, `early_stopping is True`."""
        shown = [str(v) if isinstance(v, bool) else f"'{v}'" for v in self.values]
        return f"{self.on} is " + " or ".join(shown)


def ignore_unused(
    params: Iterable[Any],
    given: Mapping[str, str],
    values: dict[str, Any],
    errors: dict[str, str],
    type_is_right: Callable[[Any], bool],
    log_ignored: bool = True,
) -> None:
    """Drop the errors of, and log, values given for hyperparameters their condition leaves unused.

    `params`: the schema's entries (`.name`, `.default`, `.used_when`); `given`: the raw text of each
    value the job set; `values`/`errors`: parse's results so far, by name (updated in place: an invalid
    ignored value takes the default). A condition whose own value is invalid decides nothing.
    """
    for param in params:
        cond: Condition | None = param.used_when
        if cond is None or param.name not in given or cond.on in errors or cond.holds(values):
            continue
        if param.name in errors:
            if cond.still_checked == "type" and not type_is_right(param):
                continue
            del errors[param.name]
            values[param.name] = param.default
        if log_ignored:
            log.info(
                "%s=%r is ignored: it is used only when %s (this job: %s=%s)",
                param.name,
                given[param.name],
                cond.describe(),
                cond.on,
                values[cond.on],
            )
