"""One hyperparameter's definition: its kind, default, bounds and condition, in the words SageMaker's
messages use (gluonseg.hyperparameters holds the table of them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gluonseg.hyperparameter_conditions import Condition

BOOL = ("True", "False")  # the choices SageMaker's messages list for a boolean


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "int" | "float" | "bool" | "choice" | "epochs" | "weights" (choices or a list of numbers)
    doc: str
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low, else >= low
    high_open: bool = False  # True: value must be < high, else <= high
    group: str = "Training"
    used_when: Condition | None = None  # None: always used, always validated
    extension: bool = False  # a gluonseg extension, not one of SageMaker's hyperparameters

    def accepts(self) -> str:
        """What the parameter accepts, in the words SageMaker's messages use."""
        if self.kind in ("choice", "bool"):
            return "one of the following: " + ", ".join(f"'{c}'" for c in self.choices)
        if self.kind == "weights":
            listed = ", ".join(f"'{c}'" for c in self.choices)
            return f"one of {listed}, or a comma-separated list of num_classes non-negative numbers, not all 0"
        if self.kind == "epochs":
            return "a comma-separated list of increasing positive integers (epochs), e.g. '10, 20'"
        noun = "an integer" if self.kind == "int" else "a number"
        if self.kind == "int" and self.low == 1 and self.high is None and not self.low_open:
            return "a positive integer"
        if self.kind == "int" and self.low == 0 and self.high is None and not self.low_open:
            return "a non-negative integer"
        parts = []
        if self.low is not None:
            parts.append(f"greater than {_fmt(self.low)}" if self.low_open else f"at least {_fmt(self.low)}")
        if self.high is not None:
            parts.append(f"less than {_fmt(self.high)}" if self.high_open else f"at most {_fmt(self.high)}")
        if self.low is not None and self.high is not None and not self.low_open and not self.high_open:
            return f"{noun} between {_fmt(self.low)} and {_fmt(self.high)}"
        return f"{noun} " + " and ".join(parts) if parts else noun

    def meaning(self) -> str:
        """The doc line, with when the value is ignored."""
        if self.used_when is None:
            return self.doc
        return f"{self.doc} Ignored unless {self.used_when.describe()}."

    def default_text(self) -> str:
        if self.required:
            return "required"
        if self.default is None:
            return "none"
        return str(self.default)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
