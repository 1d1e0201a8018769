"""`make demo`: the whole product on a generated dataset, offline, in a few CPU minutes.

Every step is the user's own command line (`gluonseg make-dataset`, `train`, `evaluate`, `serve`,
`predict`, `transform`), so the demo is also a check that the README's commands work. The summary
prints numbers read back from what those commands wrote, never numbers of its own.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from gluonseg.util import free_port

GLUONSEG = str(Path(sys.executable).parent / "gluonseg")
TENSORBOARD = str(Path(sys.executable).parent / "tensorboard")

FULL = {"classes": 5, "train": 64, "validation": 12, "size": 160, "crop": 96, "epochs": 10}
QUICK = {"classes": 4, "train": 8, "validation": 4, "size": 64, "crop": 64, "epochs": 1}


def int8_line(model: Path) -> str:
    """What training's INT8 step wrote (model-int8-onnx.json), in the words of its own record."""
    try:
        record = json.loads((model / "model-int8-onnx.json").read_text())
    except (OSError, ValueError):
        return "none (int8_model=False, or the step failed: see the training log)"
    miou = record.get("mIoU") or {}
    scores = ""
    if miou.get("fp32") is not None and miou.get("int8") is not None:
        scores = f", check mIoU {miou['fp32']:.4f} FP32 vs {miou['int8']:.4f} INT8"
    verdict = "kept" if record["kept"] else "not kept"
    return f"{verdict}: {100 * record['agreement']:.2f}% of check pixels as FP32{scores} ({record['seconds']} s)"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(*args: str) -> subprocess.CompletedProcess:
    print("$ gluonseg " + " ".join(args), flush=True)
    proc = subprocess.run([GLUONSEG, *args], text=True, capture_output=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-4000:])
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"demo failed at: gluonseg {' '.join(args)} (exit {proc.returncode})")
    return proc


# `#quality_metric: host=algo-1, epoch=3, validation mIOU <score>=0.6543` (and `best epoch=3`).
METRIC_LINE = re.compile(r"(best )?epoch=(\d+), (train loss|validation pixel_accuracy|validation mIOU) <[^>]+>=(\S+)")


def epoch_progress(epochs: int):
    """A line handler for the training's log: one line per epoch as soon as its mIOU is logged, and
    the best model's line at the end; returns None for other lines, else the text to show."""
    started = time.perf_counter()
    seen: dict[tuple[bool, int], dict[str, str]] = {}

    def handle(line: str) -> str | None:
        if "early stopping after epoch" in line:
            return "  " + line.split("] ", 1)[-1].strip()
        m = METRIC_LINE.search(line)
        if not m:
            return None
        best, epoch, name, value = bool(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        values = seen.setdefault((best, epoch), {})
        values[name] = value
        if name != "validation mIOU":
            return None
        accuracy = values.get("validation pixel_accuracy", "n/a")
        if best:
            return f"  best: epoch {epoch + 1} (the model saved), validation mIOU {value}, pixel accuracy {accuracy}"
        return (
            f"  epoch {epoch + 1}/{epochs}: train loss {values.get('train loss', 'n/a')}, validation mIOU {value}, "
            f"pixel accuracy {accuracy} ({time.perf_counter() - started:.0f} s)"
        )

    return handle


def run_streaming(args: list[str], show) -> None:
    """Run `gluonseg ARGS`, printing what `show` makes of each output line while it runs (training is
    the demo's long step: its epoch lines appear as they happen, not after it ends)."""
    print("$ gluonseg " + " ".join(args), flush=True)
    tail: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [GLUONSEG, *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1, env=env
    ) as proc:
        for line in proc.stdout:
            tail = (tail + [line])[-200:]
            shown = show(line)
            if shown is not None:
                print(shown, flush=True)
    if proc.returncode != 0:
        sys.stdout.write("".join(tail)[-8000:])
        raise SystemExit(f"demo failed at: gluonseg {' '.join(args)} (exit {proc.returncode})")


def http(url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 120):
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.headers.get("Content-Type"), response.read()


def decode_protobuf(payload: bytes) -> np.ndarray:
    from gluonseg.codecs.decode import decode_probabilities

    return decode_probabilities(payload)


def serve_and_query(model_dir: Path, image: Path, out: Path, requests_per_type: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"$ gluonseg serve --model-dir {model_dir} --port {port} --workers 1", flush=True)
    log = open(out / "server.log", "w")
    server = subprocess.Popen(
        [GLUONSEG, "serve", "--model-dir", str(model_dir), "--port", str(port), "--workers", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if http(url + "/ping", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not come up; see {out / 'server.log'}")
            time.sleep(0.3)
        print(f"  the page to try the model, while this server is up: {url}/", flush=True)
        body = image.read_bytes()
        results = {}
        for accept in ("image/png", "application/x-protobuf"):
            latencies = []
            for _ in range(requests_per_type):
                start = time.perf_counter()
                status, content_type, payload = http(
                    url + "/invocations", body, {"Content-Type": "image/jpeg", "Accept": accept}
                )
                latencies.append(time.perf_counter() - start)
            results[accept] = {
                "status": status,
                "content_type": content_type,
                "bytes": len(payload),
                "median_ms": 1000 * statistics.median(latencies),
                "payload": payload,
            }
        mask = np.array(Image.open(io.BytesIO(results["image/png"]["payload"])))
        probs = decode_protobuf(results["application/x-protobuf"]["payload"])
        agree = bool(np.array_equal(np.argmax(probs, axis=0), mask))
        width, height = Image.open(image).size
        log.flush()
        # The handler's load line says what the serving default (auto) chose on this machine.
        load_line = r"model loaded from .* in ([\d.]+) s \(\d+ classes, (\w+) (\w+),"
        loaded = re.search(load_line, (out / "server.log").read_text())
        return {
            "backend": f"{loaded[2]} {loaded[3]}, loaded in {loaded[1]} s" if loaded else "unknown (see server.log)",
            "port": port,
            "results": results,
            "mask_shape": mask.shape,
            "probabilities_shape": probs.shape,
            "argmax_equals_png": agree,
            "input_size": (width, height),
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gluonseg.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--quick", action="store_true", help="a tiny run (tests use it)")
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the run's default")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.epochs:
        cfg["epochs"] = args.epochs
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, model = out / "data", out / "model"
    # A rerun trains afresh (a finished checkpoint would otherwise be reused and the summary's
    # training time would describe nothing); the dataset is deterministic and simply rewritten.
    for stale in (model, out / "evaluation", out / "pictures", out / "transform"):
        shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()

    step("1. generate a dataset in the SageMaker channel layout")
    run(
        "make-dataset",
        "--out",
        str(data),
        "--classes",
        str(cfg["classes"]),
        "--train",
        str(cfg["train"]),
        "--validation",
        str(cfg["validation"]),
        "--size",
        str(cfg["size"]),
        "--seed",
        "0",
    )

    step("2. train FCN-ResNet-50 from scratch (use_pretrained_model=False), CPU")
    hp = {
        "num_classes": cfg["classes"],
        "num_training_samples": cfg["train"],
        "use_pretrained_model": "False",
        "algorithm": "fcn",
        "backbone": "resnet-50",
        "crop_size": cfg["crop"],
        "base_size": cfg["size"],
        "epochs": cfg["epochs"],
        "mini_batch_size": 8,
        "validation_mini_batch_size": 4,
        "optimizer": "adam",
        "learning_rate": 0.001,
    }
    train_start = time.perf_counter()
    print(f"  {cfg['epochs']} epoch(s); each one's scores are printed as it ends", flush=True)
    train_args = ["train", "--data", str(data), "--model-dir", str(model), *[f"{k}={v}" for k, v in hp.items()]]
    run_streaming(train_args, epoch_progress(cfg["epochs"]))
    train_seconds = time.perf_counter() - train_start
    board = model / "output" / "tensorboard"
    print(f"  TensorBoard: {TENSORBOARD} --logdir {board}", flush=True)
    curves = model / "output" / "data" / "training_curves.png"
    if curves.exists():
        shutil.copyfile(curves, out / "training_curves.png")

    step("3. evaluate on the validation set")
    run(
        "evaluate",
        "--model-dir",
        str(model),
        "--images",
        str(data / "validation"),
        "--masks",
        str(data / "validation_annotation"),
        "--out",
        str(out / "evaluation"),
    )
    report = json.loads((out / "evaluation" / "report.json").read_text())

    step("4. serve it and ask for a PNG mask and for probabilities")
    image = sorted((data / "validation").glob("*.jpg"))[0]
    served = serve_and_query(model, image, out, requests_per_type=3 if args.quick else 10)

    step("5. pictures: masks and overlays")
    samples = [str(p) for p in sorted((data / "validation").glob("*.jpg"))[:4]]
    run("predict", "--model-dir", str(model), *samples, "--out", str(out / "pictures"))

    step("6. batch transform over a folder")
    run("transform", "--model-dir", str(model), "--input", str(data / "validation"), "--output", str(out / "transform"))

    png, proto = served["results"]["image/png"], served["results"]["application/x-protobuf"]
    per_class = report["iou_per_class"]
    lines = [
        "",
        "== gluonseg demo summary",
        f"model folder:        {model}",
        f"training:            {cfg['epochs']} epoch(s) in {train_seconds:.0f} s "
        f"(FCN-ResNet-50, crop {cfg['crop']}, {cfg['train']} images)",
        f"validation mIOU:     {report['mIOU']:.4f}   pixel accuracy: {report['pixel_accuracy']:.4f}",
        "per-class IoU:       "
        + ", ".join(f"{name} {'n/a' if v is None else f'{v:.3f}'}" for name, v in per_class.items()),
        f"server:              {image.name} ({served['input_size'][0]}x{served['input_size'][1]}) -> "
        f"PNG {png['median_ms']:.0f} ms median, probabilities {proto['median_ms']:.0f} ms median "
        f"({proto['bytes'] / 1e6:.1f} MB)",
        f"INT8 model:          {int8_line(model)}",
        f"server backend:      {served['backend']} (GLUONSEG_BACKEND unset: auto, measured at the first load)",
        f"protobuf argmax == PNG mask: {served['argmax_equals_png']}",
        f"TensorBoard:         {TENSORBOARD} --logdir {model / 'output' / 'tensorboard'}",
        f"pictures:            {out / 'pictures'} (masks and overlays), {out / 'evaluation'} (report.json, "
        f"confusion_matrix.png), {out / 'training_curves.png'}",
        f"total time:          {time.perf_counter() - started:.0f} s",
    ]
    print("\n".join(lines))
    summary = {k: v for k, v in served.items() if k != "results"}
    summary["latency_ms"] = {k: v["median_ms"] for k, v in served["results"].items()}
    (out / "summary.json").write_text(
        json.dumps(
            {
                "mIOU": report["mIOU"],
                "pixel_accuracy": report["pixel_accuracy"],
                "train_seconds": train_seconds,
                **summary,
            },
            indent=1,
            default=str,
        )
    )
    if not served["argmax_equals_png"]:
        print("ERROR: the probabilities' argmax differs from the PNG mask", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
