"""One log format for every entry point: SageMaker's CloudWatch reads stdout/stderr line by line."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"


def configure_logging(level: str | None = None) -> None:
    level = level or os.environ.get("SAGEMAKER_CONTAINER_LOG_LEVEL") or os.environ.get("GLUONSEG_LOG_LEVEL") or "INFO"
    if str(level).isdigit():
        level = logging.getLevelName(int(level))
    logging.basicConfig(
        level=str(level).upper(), format=FORMAT, datefmt="%m/%d/%Y %H:%M:%S", stream=sys.stdout, force=True
    )
