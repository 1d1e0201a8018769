"""`train`: what SageMaker runs as `docker run IMAGE train`.

Order matters: hyperparameters and data are validated first (seconds), and only then is MXNet
imported and a network built, so a malformed job fails fast with the reason in `output/failure`.
"""

from __future__ import annotations

import logging
import sys

from gluonseg.environment import Environment
from gluonseg.errors import run_reporting_failures
from gluonseg.hyperparameters import parse
from gluonseg.logging_setup import configure_logging

log = logging.getLogger("gluonseg.train")


def run_training_job(env: Environment) -> None:
    from gluonseg.data.inputs import resolve_inputs

    hp = parse(env.raw_hyperparameters())
    log.info("hyperparameters: %s", hp.to_dict())
    resources = env.resources()
    inputs = resolve_inputs(env, hp)
    from gluonseg.training.trainer import train  # heavy import only once the job is known to be valid

    train(hp, inputs, env, resources)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    env = Environment()
    code = run_reporting_failures(lambda: run_training_job(env), lambda: env.failure_path)
    return code


if __name__ == "__main__":
    sys.exit(main())
