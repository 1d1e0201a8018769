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
    if resources.is_multi_host:
        from gluonseg.training import distributed

        if not distributed.is_worker_process():
            distributed.supervise(env, resources)  # starts this host's ps-lite roles, one of them this job's worker
            return
    inputs = resolve_inputs(env, hp, resources)
    from gluonseg.training.trainer import train  # heavy import only once the job is known to be valid

    train(hp, inputs, env, resources)


STOPPED_EXIT_CODE = 143  # 128 + SIGTERM: stopped on request, checkpoint saved, no failure to report


def run_until_stopped(job) -> int:
    """Run the job; a SIGTERM stop (checkpoint written) is not a failure and writes no failure file."""
    from gluonseg.training.trainer import Stopped

    try:
        job()
    except Stopped:
        return STOPPED_EXIT_CODE
    return 0


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    env = Environment()
    outcome = {"code": 0}

    def job() -> None:
        outcome["code"] = run_until_stopped(lambda: run_training_job(env))

    code = run_reporting_failures(job, lambda: env.failure_path)
    return code or outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
