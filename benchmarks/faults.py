"""Recovery from each fault of the serving stack, side by side: the code of this checkout vs a baseline commit.

Each fault of benchmarks/common/faults.py (SIGKILL or SIGSTOP of one of the five kinds of process, under 4
steady clients, 2 workers and 8 waiting: 10 slots) runs `--repeats` times against a fresh server; the
table gives, per fault and code, how long until every slot served 200 again with /ping 200 and until every
worker was loaded and ready again (or until `serve` was gone with nothing left), "never" when that did not
happen within 30 s, and how often /ping said 200 while a burst of requests got no 200 at all. The baseline's
`serve` runs from a git worktree of `--baseline` (PYTHONPATH), with the same harness, environment and model.

Run: .venv/bin/python -m benchmarks.faults [--baseline COMMIT] [--repeats 3] [--no-record]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common.faults import FAULTS, RECOVERY_LIMIT_S, inject
from benchmarks.common.models import random_model
from benchmarks.common.pictures import photo_jpeg
from benchmarks.common.report import publish
from benchmarks.common.server import Server

REPO = Path(__file__).resolve().parents[1]
WORKERS, QUEUE = 2, 8


def run_faults(model: Path, body: bytes, repeats: int, code: Path) -> dict[str, list[dict]]:
    """Every fault `repeats` times on servers running the `serve` of the checkout at `code`."""
    results: dict[str, list[dict]] = {}
    for fault in FAULTS:
        for _ in range(repeats):
            server = Server(model, workers=WORKERS, GLUONSEG_MAX_QUEUE=str(QUEUE), PYTHONPATH=str(code)).start()
            try:
                outcome = inject(server, fault, body, workers=WORKERS, slots=WORKERS + QUEUE)
            finally:
                server.stop()
            results.setdefault(fault.name, []).append(
                {
                    "recovered": outcome.recovered_s,
                    "full": outcome.full_s,
                    "exited": outcome.exited_s,
                    "lies": len(outcome.lies),
                    "errors": outcome.load_errors,
                    "requests": outcome.load_requests,
                }
            )
    return results


def median_or_never(values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "never"
    text = f"{statistics.median(done):.1f} s"
    return text if len(done) == len(values) else f"{text}, never in {len(values) - len(done)}/{len(values)}"


def cell(rows: list[dict], exits: bool) -> str:
    """'gone 0.4 s', or 'slots 1.2 s / full 4.5 s', plus the lies and the steady clients' failures."""
    if exits:
        text = "gone " + median_or_never([row["exited"] for row in rows])
    else:
        text = (
            f"slots {median_or_never([row['recovered'] for row in rows])} / "
            f"full {median_or_never([row['full'] for row in rows])}"
        )
    lies = sum(row["lies"] for row in rows)
    failed = sum(row["errors"] for row in rows)
    return text + (f"; /ping lied {lies}x" if lies else "") + f"; {failed} of {sum(r['requests'] for r in rows)} failed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="fde10a9")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gluonseg-faults-") as tmp:
        tmp_path = Path(tmp)
        model = random_model(tmp_path / "model", "fcn", classes=4, crop=64)
        body = photo_jpeg(64, 64, seed=0)
        tree = tmp_path / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline], check=True)
        try:
            results = {
                "this checkout": run_faults(model, body, args.repeats, REPO),
                f"baseline {args.baseline}": run_faults(model, body, args.repeats, tree),
            }
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
    names = list(results)
    lines = [
        f"| fault | expected | {' | '.join(names)} |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for fault in FAULTS:
        expected = "serve exits non-zero, nothing left" if fault.exits else "every slot 200 again"
        cells = " | ".join(cell(results[n][fault.name], fault.exits) for n in names)
        lines.append(f"| {fault.name} | {expected} | {cells} |")
    text = "\n".join(lines) + (
        f"\n\nMedian seconds from the fault: 'slots', to a burst of {WORKERS + QUEUE} concurrent requests all "
        "answered 200 with /ping 200; 'full', to every worker loaded and ready again; 'gone', to `serve` exited "
        f"with no listener and no process of its tree left; 'never' when not within {RECOVERY_LIMIT_S:.0f} s. The "
        "probes start 1 s after the fault (the steady clients issue until then), so 1.0 s is the floor. "
        "'/ping lied': probes where /ping said 200 while a burst got no 200. 'failed': requests of the 4 steady "
        f"clients (issuing for 1 s after the fault) that got no 200. {args.repeats} runs each; FCN-ResNet-50 with "
        "random weights, 4 classes, 64x64 JPEGs, MXNet FP32, 2 workers + 8 waiting."
    )
    publish("faults", text, record=not args.no_record)


if __name__ == "__main__":
    main()
