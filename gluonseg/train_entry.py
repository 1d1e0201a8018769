"""`train`: what SageMaker runs as `docker run IMAGE train`.

Order matters: hyperparameters and data are validated first (seconds), and only then is MXNet
imported and a network built, so a malformed job fails fast with the reason in `output/failure`.

On several hosts the same entry point plays three parts: the supervisor of a host (started by SageMaker,
or by `gluonseg train --hosts N` as a simulated host), and that host's ps-lite worker, which the
supervisor starts with `train_command()`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from gluonseg.environment import Environment
from gluonseg.errors import run_reporting_failures
from gluonseg.hyperparameters import parse
from gluonseg.logging_setup import configure_logging
from gluonseg.training.distributed.spec import LAUNCHER_PID_ENV, is_worker_process
from gluonseg.training.distributed.supervisor import die_with_parent, run_worker_process, supervise
from gluonseg.training.stopping import Stopped
from gluonseg.util import STOPPED_EXIT_CODE

log = logging.getLogger("gluonseg.train")


def train_command() -> list[str]:
    """The argv that runs this entry point in a new process (a host's worker, a simulated host)."""
    return [sys.executable, "-m", "gluonseg.train_entry"]


def run_training_job(env: Environment) -> None:
    from gluonseg.data.inputs import resolve_inputs

    hp = parse(env.raw_hyperparameters())
    log.info("hyperparameters: %s", hp.to_dict())
    resources = env.resources()
    env.check_outputs_writable(primary=resources.is_primary)
    if resources.is_multi_host and not is_worker_process():
        supervise(env, resources, train_command())  # starts this host's ps-lite roles, one of them this job's worker
        return
    inputs = resolve_inputs(env, hp, resources)
    from gluonseg.training.trainer import train  # heavy import only once the job is known to be valid

    train(hp, inputs, env, resources)
    from gluonseg.int8_job import make_int8_after_training

    make_int8_after_training(env, hp, inputs, resources.is_primary)


def run_until_stopped(job: Callable[[], None]) -> int:
    """Run the job; a SIGTERM stop (checkpoint written) is not a failure and writes no failure file."""
    try:
        job()
    except Stopped:
        return STOPPED_EXIT_CODE
    return 0


def _run_job() -> int:
    configure_logging()
    env = Environment()
    outcome = {"code": 0}

    def job() -> None:
        outcome["code"] = run_until_stopped(lambda: run_training_job(env))

    code = run_reporting_failures(job, lambda: env.failure_path)
    return code or outcome["code"]


def main(argv: list[str] | None = None) -> int:
    if is_worker_process():  # a host's ps-lite worker, started by its supervisor
        run_worker_process(_run_job)
    if os.environ.get(LAUNCHER_PID_ENV):  # a simulated host: it must not outlive `gluonseg train --hosts N`
        die_with_parent(LAUNCHER_PID_ENV)
    return _run_job()


if __name__ == "__main__":
    sys.exit(main())
