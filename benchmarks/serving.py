"""Serving, side by side: stock GluonCV against our handler in FP32, INT8 and BF16, for FCN, PSP and DeepLab.

Variants (ResNet-50 backbone; one generated 800x600 JPEG, the notebook's picture size):
  (a)  stock GluonCV, as a user writes it: the GluonCV class, `load_parameters`, not hybridized,
       `mx.image.imdecode`, GluonCV's `test_transform`, `predict()` on the whole decoded image,
       argmax, `get_color_pallete`, PNG. Served by a minimal Flask app under gunicorn (`baseline_app`).
  (a') in-process only: the same stock network's `predict()` on the whole image resized as the crop
       scale resizes it (short side = crop), with our resize/softmax around it: what (e)'s tiles are
       compared with at equal scale.
  (b)  our handler as shipped (serve.handler: decode, native scale = the whole picture through the graph
       compiled for its shape, mask, PNG), FP32;
  (c)  the same, INT8 (the model-int8-* files exported with `gluonseg quantize`, calibrated on the
       first 10 generated validation images);
  (d)  the same, BF16 (converted at load);
  (e)  our handler at crop scale (GLUONSEG_INFERENCE_SCALE=crop: short side = crop, fixed-shape tiles), FP32.

Measured:
- through the real server (gunicorn, workers x threads = cores, i.e. 2 x 1 here): latency per request
  with 1 client (median, p90), requests/s with 1 and with 2 concurrent clients, each worker's peak RSS;
- in-process, one OpenMP thread (what one worker has): where the time of one request goes (decode,
  resize/normalise/tiles, network, logits -> mask, encode), and the network's achieved GMAC/s against the
  1-thread FP32 roof from benchmarks.machine_limit;
- accuracy: each variant's mask on the picture against (a)'s and (a')'s, and mIoU on the generated
  validation set (see "Models" below);
- memory: one worker's RSS over `--memory-requests` requests through the server.

Models: FCN, PSP and DeepLab trained by benchmarks.run_all on the generated dataset at crop 128 (random
weights would make every accuracy column meaningless). Speed is measured on a copy of each folder whose
hyperparams say crop 240 (SageMaker's default crop_size): the networks' parameters do not depend on the
crop size, so that copy serves the same weights on 240x240 tiles. Accuracy (validation mIoU, agreement on
the validation set) is measured on the folder as trained (crop 128), where the weights belong; agreement on
the 800x600 picture uses the crop-240 copy.

Run: .venv/bin/python -m benchmarks.serving --work DIR [--algorithms fcn,psp,deeplab] [--seconds 15]
     [--memory-requests 1000] [--serve-crop 240] [--report-only] [--no-record]
(DIR holds data/ and models/<algorithm>/model from benchmarks.run_all.) The process re-runs itself with
OMP_NUM_THREADS=1 so that in-process figures match one worker.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
HEADERS = {"Content-Type": "image/jpeg", "Accept": "image/png"}
PICTURE_SIZE = (800, 600)
CALIBRATION_IMAGES = 10
VARIANTS = {
    "a": "(a) stock GluonCV, predict() at full size",
    "a'": "(a') stock predict() at crop scale (in-process only)",
    "b": "(b) ours FP32",
    "c": "(c) ours INT8",
    "d": "(d) ours BF16",
    "e": "(e) ours FP32, crop scale",
}
PRECISION = {"b": "fp32", "c": "int8", "d": "bf16", "e": "fp32"}
SCALE = {"b": "native", "c": "native", "d": "native", "e": "crop"}
SERVED = ("a", "b", "c", "d", "e")


def macs_key(key: str) -> str:
    """Which MAC count of benchmarks.machine_limit one request of a variant costs."""
    return {"a": "native", "a'": "resized", "e": "request"}.get(key, "whole")


# -- the picture and the models


def make_picture(classes: int, seed: int = 1) -> tuple[bytes, np.ndarray]:
    """A generated 800x600 JPEG (quality 90) and its ground-truth mask."""
    from gluonseg.data.synthetic import JPEG_QUALITY, make_layout, render_picture

    layout = make_layout(seed, 0, 700, classes, top_class=1)
    picture = Image.fromarray(render_picture(layout, seed, 0, classes)).resize(PICTURE_SIZE, Image.BILINEAR)
    mask = np.asarray(Image.fromarray(layout.mask()).resize(PICTURE_SIZE, Image.NEAREST))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), mask


def serving_copy(trained: Path, folder: Path, crop: int) -> Path:
    """The trained model folder with hyperparams saying `crop` (same parameters: they are crop-independent)."""
    from gluonseg.artifacts import BEST_PARAMS, HYPERPARAMS_FILE, LAST_PARAMS, META_KEY

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in (BEST_PARAMS, LAST_PARAMS):
        if (trained / name).exists():
            shutil.copyfile(trained / name, folder / name)
    data = json.loads((trained / HYPERPARAMS_FILE).read_text())
    data["crop_size"] = crop
    data.setdefault(META_KEY, {})["crop_size"] = crop
    data[META_KEY]["serving_copy_of"] = str(trained)
    (folder / HYPERPARAMS_FILE).write_text(json.dumps(data, indent=1))
    return folder


# -- in-process variants


@dataclass
class Timed:
    mask: np.ndarray
    stages: dict[str, float]  # seconds


class Stock:
    """(a) and (a'): GluonCV's own class and predict(), not hybridized."""

    def __init__(self, model_dir: Path, at_our_scale: bool = False) -> None:
        import mxnet as mx
        from gluoncv.model_zoo import FCN, DeepLabV3, PSPNet

        from gluonseg.artifacts import read_model_dir
        from gluonseg.models import gluoncv_backbone

        artifact = read_model_dir(model_dir)
        hp = artifact.hp
        has_aux = any(k.startswith("auxlayer.") for k in mx.nd.load(str(artifact.params_path)))
        classes = {"fcn": FCN, "psp": PSPNet, "deeplab": DeepLabV3}[hp.algorithm]
        with contextlib.redirect_stdout(io.StringIO()):  # PSPNet prints its crop size
            self.net = classes(
                artifact.num_classes,
                backbone=gluoncv_backbone(hp.backbone),
                aux=has_aux,
                pretrained_base=False,
                crop_size=hp.crop_size,
                base_size=hp.base_size,
            )
        self.net.load_parameters(str(artifact.params_path), ctx=mx.cpu())
        self.crop = hp.crop_size
        self.at_our_scale = at_our_scale

    def run(self, jpeg: bytes) -> Timed:
        import mxnet as mx
        from gluoncv.data.transforms.presets.segmentation import test_transform
        from gluoncv.utils.viz import get_color_pallete

        from gluonseg.data.transforms import normalize
        from gluonseg.inference.geometry import resized_size
        from gluonseg.inference.postprocess import logits_to_prediction

        t0 = time.perf_counter()
        img = mx.image.imdecode(jpeg)
        img.wait_to_read()
        t1 = time.perf_counter()
        height, width = img.shape[:2]
        if self.at_our_scale:
            new_h, new_w = resized_size(height, width, self.crop)
            small = np.asarray(Image.fromarray(img.asnumpy()).resize((new_w, new_h), Image.BILINEAR))
            x = mx.nd.array(normalize(small)[None])
        else:
            x = test_transform(img, mx.cpu())
        x.wait_to_read()
        t2 = time.perf_counter()
        out = self.net.predict(x)
        out.wait_to_read()
        t3 = time.perf_counter()
        if self.at_our_scale:
            mask = logits_to_prediction(out[0].asnumpy(), height, width, False).mask
        else:
            mask = mx.nd.squeeze(mx.nd.argmax(out, 1)).asnumpy().astype(np.uint8)
        t4 = time.perf_counter()
        buffer = io.BytesIO()
        get_color_pallete(mask, "pascal_voc").save(buffer, format="PNG")
        t5 = time.perf_counter()
        stages = {"decode": t1 - t0, "preprocess": t2 - t1, "network": t3 - t2, "postprocess": t4 - t3}
        return Timed(mask, {**stages, "encode": t5 - t4, "total": t5 - t0})


class Ours:
    """(b) to (e): the real handler, its stages timed one by one (the same calls `handle` makes)."""

    def __init__(self, model_dir: Path, precision: str, scale: str) -> None:
        from serve.handler import Context, SegmentationHandler

        self.handler = SegmentationHandler()
        self.context = Context(model_dir, precision=precision, scale=scale, request_headers=[dict(HEADERS)])
        self.handler.initialize(self.context)
        self.predictor = self.handler.predictor
        self.precision = self.predictor.precision
        self.network_s = 0.0
        forward = self.predictor._forward

        def timed_forward(graph: Any, data: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            out = forward(graph, data)
            self.network_s += time.perf_counter() - start
            return out

        self.predictor._forward = timed_forward

    def run(self, jpeg: bytes) -> Timed:
        from gluonseg.inference.postprocess import logits_to_prediction

        self.network_s = 0.0
        t0 = time.perf_counter()
        (request,) = self.handler.preprocess([{"body": jpeg}])
        t1 = time.perf_counter()
        predictor = self.predictor
        native = predictor.scale == "native"
        logits = predictor.native_logits(request.image) if native else predictor.averaged_logits(request.image)
        t2 = time.perf_counter()
        prediction = logits_to_prediction(logits, *request.image.shape[:2], False)
        t3 = time.perf_counter()
        self.handler.postprocess([(prediction, request.accept)])
        t4 = time.perf_counter()
        stages = {"decode": t1 - t0, "preprocess": t2 - t1 - self.network_s, "network": self.network_s}
        return Timed(prediction.mask, {**stages, "postprocess": t3 - t2, "encode": t4 - t3, "total": t4 - t0})


def make_variant(key: str, model_dir: Path):
    if key == "a":
        return Stock(model_dir)
    if key == "a'":
        return Stock(model_dir, at_our_scale=True)
    return Ours(model_dir, PRECISION[key], SCALE[key])


def profile(variant, jpeg: bytes, runs: int) -> Timed:
    """Median of each stage over `runs` requests after one warm-up."""
    first = variant.run(jpeg)
    samples = [variant.run(jpeg) for _ in range(runs)]
    stages = {name: statistics.median(s.stages[name] for s in samples) for name in first.stages}
    return Timed(samples[-1].mask, stages)


def validation_scores(variant, samples, label_map, num_classes: int) -> tuple[float, list[np.ndarray]]:
    from gluonseg.data.images import load_mask
    from gluonseg.metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes)
    masks = []
    for sample in samples:
        mask = variant.run(Path(sample.image_path).read_bytes()).mask
        cm.update(mask, label_map.apply(load_mask(sample.mask_path, str(sample.mask_path))))
        masks.append(mask)
    return cm.mean_iou(), masks


def equal_fraction(a: list[np.ndarray] | np.ndarray, b: list[np.ndarray] | np.ndarray) -> float:
    a_list, b_list = (a, b) if isinstance(a, list) else ([a], [b])
    equal = sum(int((x == y).sum()) for x, y in zip(a_list, b_list))
    return equal / sum(x.size for x in a_list)


# -- servers and load


def baseline_app():
    """gunicorn's app factory for (a): what a user serving stock GluonCV writes (model from BENCH_MODEL_DIR)."""
    from flask import Flask, Response, request

    stock = Stock(Path(os.environ["BENCH_MODEL_DIR"]))
    app = Flask("stock-gluoncv")

    @app.get("/ping")
    def ping() -> Response:
        return Response(status=200)

    @app.post("/invocations")
    def invocations() -> Response:
        import mxnet as mx
        from gluoncv.data.transforms.presets.segmentation import test_transform
        from gluoncv.utils.viz import get_color_pallete

        img = mx.image.imdecode(request.get_data())
        output = stock.net.predict(test_transform(img, mx.cpu()))
        mask = mx.nd.squeeze(mx.nd.argmax(output, 1)).asnumpy()
        buffer = io.BytesIO()
        get_color_pallete(mask, "pascal_voc").save(buffer, format="PNG")
        return Response(buffer.getvalue(), content_type="image/png")

    return app


class BaselineServer:
    """Stock GluonCV behind gunicorn with our server's worker layout (workers x 1 thread, OMP 1)."""

    def __init__(self, model_dir: Path, workers: int, log_dir: Path) -> None:
        from gluonseg.util import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_dir = model_dir
        self.workers = workers
        self.log_path = log_dir / f"baseline-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> BaselineServer:
        env = {
            **os.environ,
            "BENCH_MODEL_DIR": str(self.model_dir),
            "OMP_NUM_THREADS": "1",
            "MXNET_CPU_WORKER_NTHREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        command = [
            str(Path(sys.executable).parent / "gunicorn"),
            f"--workers={self.workers}",
            "--threads=1",
            f"--bind=127.0.0.1:{self.port}",
            "--timeout=900",
            "benchmarks.serving:baseline_app()",
        ]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"baseline server exited:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/ping", timeout=2).status_code == 200:
                    return self
            time.sleep(0.5)
        raise RuntimeError(f"baseline server not ready in {timeout} s")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class LoadResult:
    clients: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    last_body: bytes = b""

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def load(url: str, body: bytes, clients: int, seconds: float, min_requests: int, max_requests: int | None = None):
    """`clients` threads posting `body` back to back until `seconds` passed and `min_requests` were sent."""
    result = LoadResult(clients)
    lock = threading.Lock()
    issued = [0]
    start = time.perf_counter()
    errors: list[str] = []

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                elapsed = time.perf_counter() - start
                enough = issued[0] >= min_requests and elapsed >= seconds
                if enough or (max_requests is not None and issued[0] >= max_requests) or errors:
                    return
                issued[0] += 1
            t0 = time.perf_counter()
            response = session.post(url + "/invocations", data=body, headers=HEADERS, timeout=900)
            latency = time.perf_counter() - t0
            with lock:
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:300]}")
                    return
                result.latencies.append(latency)
                result.last_body = response.content

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"request failed: {errors[0]}")
    return result


def serve_and_load(key: str, model_dir: Path, jpeg: bytes, args, log_dir: Path) -> dict[str, Any]:
    """Start the server for one variant, warm it, load it with 1 then 2 clients, read worker memory."""
    from gluonseg.util import available_cpus as cpu_count
    from tests.server_process import Server

    workers = cpu_count()
    if key == "a":
        server = BaselineServer(model_dir, workers, log_dir).start()
    else:
        server = Server(
            model_dir, workers=workers, GLUONSEG_PRECISION=PRECISION[key], GLUONSEG_INFERENCE_SCALE=SCALE[key]
        ).start(timeout=600)
    try:
        load(server.url, jpeg, workers, 0, 2 * workers)  # every worker takes its first requests
        one = load(server.url, jpeg, 1, args.seconds, args.min_requests)
        two = load(server.url, jpeg, 2, args.seconds, 2 * args.min_requests)
        peak = max(proc_status(pid, "VmHWM") for pid in server.worker_pids())
        response_mask = np.asarray(Image.open(io.BytesIO(two.last_body)))
    finally:
        server.stop()
    lat = sorted(one.latencies)
    return {
        "latency_median_s": statistics.median(lat),
        "latency_p90_s": float(np.percentile(lat, 90)),
        "requests_1": one.requests,
        "rps_1": one.rps,
        "requests_2": two.requests,
        "rps_2": two.rps,
        "peak_rss_bytes": peak,
        "workers": workers,
        "response_mask": response_mask,
    }


def memory_run(model_dir: Path, precision: str, jpeg: bytes, total: int, every: int) -> dict[str, Any]:
    """Each worker's RSS after warm-up and every `every` requests, over `total` requests from 2 clients."""
    from gluonseg.util import available_cpus as cpu_count
    from tests.server_process import Server

    server = Server(model_dir, workers=cpu_count(), GLUONSEG_PRECISION=precision).start(timeout=600)  # native
    samples = []
    try:
        load(server.url, jpeg, 2, 0, 4)
        pids = server.worker_pids()
        samples.append((0, [proc_status(pid, "VmRSS") for pid in pids]))
        done, start = 0, time.perf_counter()
        while done < total:
            chunk = min(every, total - done)
            load(server.url, jpeg, 2, 0, chunk, max_requests=chunk)
            done += chunk
            samples.append((done, [proc_status(pid, "VmRSS") for pid in pids]))
        seconds = time.perf_counter() - start
        peaks = [proc_status(pid, "VmHWM") for pid in pids]
    finally:
        server.stop()
    return {"precision": precision, "requests": total, "seconds": seconds, "samples": samples, "peaks": peaks}


# -- the report


def _mb(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def _ms(value: float) -> str:
    return f"{value * 1000:,.0f}"


def report(results: dict[str, Any], limit: dict[str, Any], args) -> str:
    cores = str(limit["cores"])
    # Workers are single-threaded, so the server's limit is one 1-thread roof per worker (= per core).
    roof1 = limit["roof"]["1"]["fp32"]
    roof_all = limit["cores"] * roof1
    crop, picture = args.serve_crop, "x".join(str(v) for v in PICTURE_SIZE)
    lines = [
        f"Picture: one generated {picture} JPEG (quality 90). (b), (c), (d) run it at native scale, the default: "
        f"the whole {picture} picture through the graph compiled for its shape, as stock predict() does; (e) at "
        f"crop scale, crop {crop}: resized to {limit['resized'][0]}x{limit['resized'][1]} and covered with "
        f"{limit['tiles']} tiles. Server: gunicorn, "
        f"{results['workers']} workers x 1 thread (= cores). Models: trained on the generated dataset at crop "
        f"{results['train_crop']} ({results['trained_note']}); speed on a crop-{crop} copy of the same parameters. "
        f"FP32 roof: {roof1:.1f} GMAC/s on 1 thread, so {roof_all:.1f} for the {cores} single-threaded workers "
        "(benchmarks.machine_limit, same run). GMACs count only kernel taps inside the feature maps (see the "
        "machine-limit section). "
        f"Load runs last at least {args.seconds:.0f} s and {args.min_requests} requests per client; n = requests "
        "measured.",
        "",
        "**Speed through the server** (req/s at 1 and 2 concurrent clients; GMAC/s = requests/s at 2 clients x "
        f"MACs per request, as a fraction of {cores} x the 1-thread FP32 roof):",
        "",
        "| model | variant | latency median / p90 (ms), 1 client | req/s 1 client (n) | req/s 2 clients (n) | "
        "2 vs 1 client | req/s vs (b) | vs (a) | peak RSS per worker (MB) | GMAC per request | GMAC/s, % of roof |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for algorithm, res in results["models"].items():
        served = res["served"]
        for key in SERVED:
            s = served[key]
            macs = limit["macs"][algorithm][macs_key(key)]
            rate = s["rps_2"] * macs / 1e9
            ran = res["precision"][key]
            label = VARIANTS[key] + (f" [fell back to {ran}]" if key in PRECISION and ran != PRECISION[key] else "")
            lines.append(
                f"| {algorithm} | {label} | {_ms(s['latency_median_s'])} / {_ms(s['latency_p90_s'])} | "
                f"{s['rps_1']:.2f} ({s['requests_1']}) | {s['rps_2']:.2f} ({s['requests_2']}) | "
                f"{s['rps_2'] / s['rps_1']:.2f}x | {s['rps_2'] / served['b']['rps_2']:.2f}x | "
                f"{s['rps_2'] / served['a']['rps_2']:.2f}x | {_mb(s['peak_rss_bytes'])} | {macs / 1e9:.1f} | "
                f"{rate:.1f} ({rate / roof_all:.0%}) |"
            )
    same = min(s["response_equals_in_process"] for r in results["models"].values() for s in r["served"].values())
    lines += [
        "",
        f"Every server response was checked against the in-process mask of the same variant: at least {same:.2%} "
        "equal pixels (the same code in both places).",
        "",
        "**Where one request's time goes** (in-process, 1 OpenMP thread as in one worker; median of "
        f"{args.profile_runs} requests after a warm-up; ms). Network GMAC/s = MACs / network time, against the "
        f"1-thread FP32 roof ({roof1:.1f}); INT8/BF16 count the same MACs, so their fraction can pass 100%.",
        "",
        "| model | variant | decode | preprocess (resize, normalise, tiles) | network | logits -> mask | encode | "
        "total | not network | network GMAC/s, % of 1-thread roof |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for algorithm, res in results["models"].items():
        for key in VARIANTS:
            p = res["profile"][key]
            macs = limit["macs"][algorithm][macs_key(key)]
            rate = macs / p["network"] / 1e9
            other = p["total"] - p["network"]
            lines.append(
                f"| {algorithm} | {VARIANTS[key]} | {_ms(p['decode'])} | {_ms(p['preprocess'])} | "
                f"{_ms(p['network'])} | {_ms(p['postprocess'])} | {_ms(p['encode'])} | {_ms(p['total'])} | "
                f"{other / p['total']:.1%} | {rate:.1f} ({rate / roof1:.0%}) |"
            )
    lines += [
        "",
        f"**Accuracy.** Equal pixels on the {picture} picture, against (a) and (a'); on the "
        f"generated validation set ({results['validation_images']} images, models as trained at crop "
        f"{results['train_crop']}): equal pixels against (a) and (b), and mIoU (all classes, as training reports "
        "it). INT8 ranges were calibrated on the first "
        f"{CALIBRATION_IMAGES} of these validation images. The generated validation pictures have sides that "
        "are not multiples of 8: native scale pads those to the next multiple of 8 (the pooled branches of PSP "
        "and DeepLab must meet the feature map exactly) and crops the answer, where stock predict() resizes to "
        "the unpadded size, so (b) and (a) differ along the right and bottom edges there; on the 800x600 "
        "picture (multiples of 8) they are the same computation.",
        "",
        "| model | variant | picture: = (a) | picture: = (a') | picture: pixel accuracy | validation: = (a) | "
        "validation: = (b) | validation mIoU | mIoU minus (b), points |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for algorithm, res in results["models"].items():
        acc = res["accuracy"]
        for key in VARIANTS:
            r = acc[key]
            lines.append(
                f"| {algorithm} | {VARIANTS[key]} | {r['picture_vs_a']:.2%} | {r['picture_vs_a_prime']:.2%} | "
                f"{r['picture_accuracy']:.2%} | {r['val_vs_a']:.2%} | {r['val_vs_b']:.2%} | {r['miou']:.4f} | "
                f"{100 * (r['miou'] - acc['b']['miou']):+.2f} |"
            )
    mem = results.get("memory")
    if mem:
        first, last = mem["samples"][0][1], mem["samples"][-1][1]
        growth = max(b - a for a, b in zip(first, last))
        steps = " -> ".join(f"{n}: {'/'.join(_mb(v) for v in rss)}" for n, rss in mem["samples"])
        lines += [
            "",
            f"**Memory over {mem['requests']} requests** ({mem['algorithm']} {mem['precision'].upper()}, the fastest "
            f"variant, 2 clients, {mem['seconds']:.0f} s; decode, tiling, post-processing and encoding are the "
            "same code in every precision). Worker RSS in MB after n requests (one number per worker): "
            f"{steps}. Peak (VmHWM) per worker: {'/'.join(_mb(v) for v in mem['peaks'])} MB. Largest growth from "
            f"after warm-up to the end: {growth / 2**20:+.1f} MB.",
        ]
    lines += ["", "**Targets**", ""] + results["verdicts"]
    return "\n".join(lines)


def verdicts(results: dict[str, Any], limit: dict[str, Any]) -> list[str]:
    out = []
    roof1 = limit["roof"]["1"]["fp32"]

    def mark(ok: bool) -> str:
        return "**met**" if ok else "**NOT met**"

    for algorithm, res in results["models"].items():
        s, p, acc = res["served"], res["profile"], res["accuracy"]
        macs = limit["macs"][algorithm]
        faster = s["b"]["rps_2"] / s["a"]["rps_2"]
        equal = acc["b"]["picture_vs_a"]
        other = (p["b"]["total"] - p["b"]["network"]) / p["b"]["total"]
        rate = macs[macs_key("b")] / p["b"]["network"] / 1e9 / roof1
        int8 = s["c"]["rps_2"] / s["b"]["rps_2"]
        change = 100 * (acc["c"]["miou"] - acc["b"]["miou"])
        bf16 = s["d"]["rps_2"] / s["b"]["rps_2"]
        crop = s["e"]["rps_2"] / s["b"]["rps_2"]
        scaling = min(s[k]["rps_2"] / s[k]["rps_1"] for k in ("b", "c", "d", "e"))
        out += [
            f"- {algorithm}: FP32 handler no slower than (a): {mark(faster >= 1)} ({faster:.2f}x the requests/s; "
            f"in-process {_ms(p['a']['total'])} -> {_ms(p['b']['total'])} ms per request); at equal output "
            f"(>= 99.9% equal pixels): {mark(equal >= 0.999)} ({equal:.2%} on the picture, "
            f"{acc['b']['val_vs_a']:.2%} on the validation set).",
            f"- {algorithm}: everything but the network <= 10% of the request: {mark(other <= 0.10)} ({other:.1%}); "
            f"network >= 70% of the machine limit: {mark(rate >= 0.70)} ({rate:.0%} of the 1-thread FP32 roof).",
            f"- {algorithm}: INT8 >= 2.5x FP32 requests/s: {mark(int8 >= 2.5)} ({int8:.2f}x); mIoU loss <= 1 point: "
            f"{mark(change >= -1.0)} (INT8 minus FP32: {change:+.2f} points). BF16: {bf16:.2f}x FP32 requests/s, mIoU "
            f"{100 * (acc['d']['miou'] - acc['b']['miou']):+.2f} points ({'wins' if bf16 > 1 else 'does not win'}).",
            f"- {algorithm}: crop scale (e), the faster option: {crop:.2f}x (b)'s requests/s "
            f"({macs['request'] / 1e9:.1f} against {macs['whole'] / 1e9:.1f} GMAC); its masks equal stock "
            f"predict() at the same scale (a') on "
            f"{acc['e']['picture_vs_a_prime']:.2%} of the picture and (a) on {acc['e']['picture_vs_a']:.2%}; "
            f"validation mIoU {100 * (acc['e']['miou'] - acc['b']['miou']):+.2f} points against (b).",
            f"- {algorithm}: 2 clients >= 1.8x one client's requests/s: {mark(scaling >= 1.8)} (lowest of b/c/d/e: "
            f"{scaling:.2f}x).",
        ]
    mem = results.get("memory")
    if mem:
        first, last = mem["samples"][0][1], mem["samples"][-1][1]
        growth = max(b - a for a, b in zip(first, last)) / 2**20
        out.append(
            f"- Memory: worker RSS {'/'.join(_mb(v) for v in last)} MB after {mem['requests']} requests; flat "
            f"(growth < 20 MB): {mark(growth < 20)} ({growth:+.1f} MB)."
        )
    return out


# -- main


def _reexec_single_threaded() -> None:
    if os.environ.get("OMP_NUM_THREADS") != "1" or os.environ.get("MXNET_CPU_WORKER_NTHREADS") != "1":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.serving", *sys.argv[1:]], env)


def run_model(algorithm: str, work: Path, jpeg: bytes, truth: np.ndarray, args, log_dir: Path) -> dict[str, Any]:
    import gc

    from gluonseg.data.channels import SPLITS, pair_channel
    from gluonseg.data.label_map import load_label_map
    from gluonseg.inference.precision import export_int8

    trained = work / "models" / algorithm / "model"
    data = work / "data"
    fast = serving_copy(trained, work / "serve" / f"{algorithm}-{args.serve_crop}", args.serve_crop)
    calibration = data / "validation"
    for folder in (trained, fast):
        export_int8(folder, calibration, CALIBRATION_IMAGES)
    image_dir, mask_dir = SPLITS["validation"]
    samples = pair_channel(data / image_dir, data / mask_dir)
    label_map = load_label_map(data / "label_map" if (data / "label_map").is_dir() else None, "validation")
    num_classes = len(json.loads((data / "classes.json").read_text()))

    res: dict[str, Any] = {"profile": {}, "accuracy": {}, "served": {}, "precision": {}}
    picture_masks: dict[str, np.ndarray] = {}
    val_masks: dict[str, list[np.ndarray]] = {}
    miou: dict[str, float] = {}
    for key in VARIANTS:
        print(f"[{algorithm} {key}] in-process profile and accuracy", flush=True)
        variant = make_variant(key, fast)
        res["precision"][key] = getattr(variant, "precision", "fp32")
        timed = profile(variant, jpeg, args.profile_runs)
        res["profile"][key] = timed.stages
        picture_masks[key] = timed.mask
        del variant
        gc.collect()
        variant = make_variant(key, trained)
        miou[key], val_masks[key] = validation_scores(variant, samples, label_map, num_classes)
        del variant
        gc.collect()
    for key in VARIANTS:
        valid = truth != 255
        res["accuracy"][key] = {
            "picture_vs_a": equal_fraction(picture_masks[key], picture_masks["a"]),
            "picture_vs_a_prime": equal_fraction(picture_masks[key], picture_masks["a'"]),
            "picture_accuracy": float((picture_masks[key] == truth)[valid].mean()),
            "val_vs_a": equal_fraction(val_masks[key], val_masks["a"]),
            "val_vs_b": equal_fraction(val_masks[key], val_masks["b"]),
            "miou": miou[key],
        }
    for key in SERVED:
        print(f"[{algorithm} {key}] through the server", flush=True)
        served = serve_and_load(key, fast, jpeg, args, log_dir)
        # The server's answer must be the in-process answer (same code, same single thread per worker).
        served["response_equals_in_process"] = equal_fraction(served.pop("response_mask"), picture_masks[key])
        res["served"][key] = served
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="holds data/ and models/<algorithm>/model")
    parser.add_argument("--algorithms", default="fcn,psp,deeplab")
    parser.add_argument("--serve-crop", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=15.0, help="minimum length of each load run")
    parser.add_argument("--min-requests", type=int, default=4, help="minimum requests per client in a load run")
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--memory-requests", type=int, default=400)
    parser.add_argument("--memory-algorithm", default="fcn")
    parser.add_argument("--memory-precision", default="int8")
    parser.add_argument("--report-only", action="store_true", help="re-render the last run's results/serving.json")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    _reexec_single_threaded()

    from benchmarks.machine_limit import load_results

    limit = load_results()
    if args.report_only:
        results = json.loads(RESULTS.read_text())
        for name, value in results.get("args", {}).items():
            setattr(args, name, value)
        results["verdicts"] = verdicts(results, limit)
        text = report(results, limit, args)
        print(text)
        if not args.no_record:
            from benchmarks.report import write_section

            write_section("serving", text)
        return
    if limit is None or limit["crop"] != args.serve_crop or any("whole" not in m for m in limit["macs"].values()):
        subprocess.run(
            [sys.executable, "-m", "benchmarks.machine_limit", "--crop", str(args.serve_crop), "--no-record"],
            check=True,
            env={k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS")},
        )
        limit = load_results()
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    classes = len(json.loads((args.work / "data" / "classes.json").read_text()))
    jpeg, truth = make_picture(classes)
    log_dir = args.work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    trained_hp = json.loads((args.work / "models" / algorithms[0] / "model" / "hyperparams.json").read_text())
    results: dict[str, Any] = {
        "workers": None,
        "train_crop": trained_hp["crop_size"],
        "trained_note": (args.work / "models" / "NOTE").read_text().strip()
        if (args.work / "models" / "NOTE").exists()
        else "see benchmarks.run_all",
        "validation_images": len(list((args.work / "data" / "validation").iterdir())),
        "models": {},
    }
    for algorithm in algorithms:
        results["models"][algorithm] = run_model(algorithm, args.work, jpeg, truth, args, log_dir)
        results["workers"] = results["models"][algorithm]["served"]["b"]["workers"]
    if args.memory_requests > 0:
        folder = args.work / "serve" / f"{args.memory_algorithm}-{args.serve_crop}"
        print(f"[memory] {args.memory_requests} requests", flush=True)
        results["memory"] = {
            "algorithm": args.memory_algorithm,
            **memory_run(folder, args.memory_precision, jpeg, args.memory_requests, max(1, args.memory_requests // 10)),
        }
    results["verdicts"] = verdicts(results, limit)
    results["args"] = {k: v for k, v in vars(args).items() if k not in ("work", "report_only", "no_record")}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=float))
    text = report(results, limit, args)
    print(text)
    if not args.no_record:
        from benchmarks.report import write_section

        write_section("serving", text)


if __name__ == "__main__":
    main()
