"""Progress for the CLI: over the pictures of a folder, and over one large picture's network windows.

On a terminal, tqdm bars. Elsewhere (CloudWatch, CI logs) a bar redrawn with carriage returns becomes one
garbled line per refresh, so progress over pictures comes as log lines instead, and a large picture's own
line comes from whoever ran it (the server's handler logs one per large picture).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger("gluonseg.progress")

T = TypeVar("T")

WINDOW_BAR_DELAY_S = 3.0  # a picture's own bar over its windows appears once it has taken this long


def with_progress(items: Iterable[T], total: int, desc: str, show_bar: bool | None = None) -> Iterator[T]:
    """Yield `items` while reporting progress: a tqdm bar on a terminal, else a log line about every 10%.

    `show_bar=None` decides by whether stderr is a terminal.
    """
    show_bar = sys.stderr.isatty() if show_bar is None else show_bar
    if show_bar:
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit="image")
        return
    step = max(1, -(-total // 10))
    start = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        if done % step == 0 or done == total:
            log.info(
                "%s: %d/%d images (%.0f%%, %.1f s)",
                desc,
                done,
                total,
                100.0 * done / total,
                time.perf_counter() - start,
            )


class WindowProgress:
    """`progress` for Predictor.predict: a tqdm bar over one picture's network windows, on a terminal only,
    shown once the picture has taken WINDOW_BAR_DELAY_S (large pictures at slide scale or under TTA).

    `position`: the terminal line under the folder's bar (1 for a single process; pool workers each take
    their own line, sharing tqdm's lock so that bars do not overwrite each other). A context manager: the bar
    goes when the picture is done, whether or not it succeeded.
    """

    def __init__(
        self, show_bar: bool | None, desc: str = "windows", position: int = 1, delay: float | None = None
    ) -> None:
        self.show = sys.stderr.isatty() if show_bar is None else show_bar
        self.desc = desc
        self.position = position
        self.delay = WINDOW_BAR_DELAY_S if delay is None else delay
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.show:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=self.desc, unit="window", delay=self.delay, leave=False, position=self.position
            )
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> WindowProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
