"""`Hyperparameters`: a job's parsed, typed hyperparameters (made by `gluonseg.hyperparameters.parse`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Hyperparameters(Mapping[str, Any]):
    """Parsed, typed hyperparameters with attribute access (`hp.crop_size`)."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def replace(self, **changes: Any) -> Hyperparameters:
        return Hyperparameters({**self._values, **changes})

    def __repr__(self) -> str:
        return f"Hyperparameters({self._values!r})"
