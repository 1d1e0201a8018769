"""gluonseg beside what a PyTorch user would run instead (#24), on the same CPU, in one run.

For FCN and DeepLabV3 on ResNet-50 (torchvision has no PSPNet), one forward pass on a SIDE x SIDE input with
every core's thread, median of --runs after warm-up:
- ours: MXNet FP32, ONNX Runtime and OpenVINO FP32, OpenVINO BF16 (where the CPU has BF16), and the QDQ INT8
  model (gluonseg.inference.int8_onnx's quantizer, the first convolution and the classifier in FP32: the plan a
  trained model kept in the int8 section) in ONNX Runtime and OpenVINO;
- PyTorch: benchmarks/peer/torch_segmentation.py in its own environment (`make peer-venv`; torch and gluoncv
  cannot share one): FP32, channels_last, BF16 autocast, torch.compile, INT8 by FX post-training quantization.
Ours runs a trained model folder where --model gives one (its kept model-int8.onnx when training made one; the
numbers a user gets), else a folder of random weights; PyTorch runs random weights of the same architecture and
classes (torchvision's pretrained ones cannot be downloaded here). Untrained weights can slow a network that does
not flush denormals (MXNet: 4.29 s at 480² with random weights in a run where ONNX Runtime took 3.28 s), so use
trained models for ours where there are any. GMAC at SIDE: ours counted from the ONNX graph's convolutions,
PyTorch's by its FLOP counter; GMAC/s is per second of the forward pass. An optional extra, never in CI: it
needs the 5 GB peer environment.

Run: .venv/bin/python -m benchmarks.pytorch_peer [--algorithms fcn,deeplab] [--model ALGORITHM=DIR ...]
     [--side 480] [--runs 5] [--classes 21] [--peer-python .venv-peer/bin/python] [--work DIR] [--no-record]
     [--section NAME]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gluonseg.util import available_cpus, cpu_flags

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = ROOT / "benchmarks" / "peer" / "torch_segmentation.py"
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
CALIBRATION_PICTURES = 8


def our_networks(folder: Path, classes: int, side: int) -> tuple[float, list[tuple[str, str, Any]]]:
    """(GMAC at side, [(backend, precision, builder)]) for a model folder, its export and INT8 model made here."""
    import onnx

    from gluonseg.artifacts import read_model_dir
    from gluonseg.data.check_set import CheckPicture
    from gluonseg.inference.int8_control import conv_macs, end_convolutions
    from gluonseg.inference.int8_onnx import calibrate, canvases, int8_onnx_path, prepare, quantize
    from gluonseg.inference.network import MXNetNetwork
    from gluonseg.inference.onnx_backends import OnnxRuntimeNetwork, OpenVinoNetwork
    from gluonseg.inference.onnx_export import ONNX_FILE, check_pictures, export_onnx
    from gluonseg.inference.precision import fp32_network

    artifact = read_model_dir(folder)
    export_onnx(folder, folder)
    fp32, prepared = folder / ONNX_FILE, folder / "prepared.onnx"
    prepare(fp32, prepared)
    graph = onnx.load(str(prepared), load_external_data=False)
    int8 = int8_onnx_path(artifact)  # kept by training, checked on the job's pictures
    if int8 is None:  # random weights: the first plan, for its speed alone
        int8 = folder / "model-int8.onnx"
        pictures = [CheckPicture(n, p, None) for n, p in check_pictures(None, classes)[:CALIBRATION_PICTURES]]
        quantize(prepared, int8, calibrate(prepared, canvases(pictures), folder), end_convolutions(graph, classes))
    gmac = sum(conv_macs(graph, side).values()) / 1e9
    found = [
        ("mxnet", "fp32", lambda: MXNetNetwork(fp32_network(artifact), artifact.hp.crop_size)),
        ("onnxruntime", "fp32", lambda: OnnxRuntimeNetwork(fp32, prefer_gpu=False)),
        ("openvino", "fp32", lambda: OpenVinoNetwork(fp32, "fp32")),
    ]
    if {"avx512_bf16", "amx_bf16"} & cpu_flags():
        found.append(("openvino", "bf16", lambda: OpenVinoNetwork(fp32, "bf16")))
    found += [
        ("onnxruntime", "int8", lambda: OnnxRuntimeNetwork(int8, prefer_gpu=False, precision="int8")),
        ("openvino", "int8", lambda: OpenVinoNetwork(int8, "int8")),
    ]
    return gmac, found


def ours(algorithm: str, work: Path, classes: int, side: int, runs: int, trained: Path | None) -> dict[str, Any]:
    from benchmarks.common.models import copy_for_serving, random_model
    from gluonseg.inference.backend_choice import median_seconds

    if trained is not None:  # a copy: the export is written into the folder
        folder = copy_for_serving(trained, work / algorithm)
    else:
        folder = random_model(work / algorithm, algorithm, classes=classes)
    gmac, networks = our_networks(folder, classes, side)
    data = np.random.default_rng(0).standard_normal((3, side, side)).astype(np.float32)
    rows = []
    for backend, precision, build in networks:
        network = build()
        if network.precision != precision:  # e.g. OpenVINO fell back to FP32
            continue
        rows.append({"variant": f"{backend} {precision}", "seconds": median_seconds(network, data, runs)})
        print(f"{algorithm} ours: {rows[-1]}", flush=True)
        del network
        gc.collect()
    return {"gmac": gmac, "rows": rows, "weights": "trained" if trained else "random"}


def peer(python: Path, algorithm: str, classes: int, side: int, runs: int) -> dict[str, Any]:
    command = [str(python), str(PEER_SCRIPT), "--algorithm", algorithm, "--classes", str(classes)]
    command += ["--side", str(side), "--runs", str(runs), "--threads", str(available_cpus())]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the PyTorch side failed ({proc.returncode}): {proc.stderr[-2000:]}")
    for line in lines[1:]:
        print(f"{algorithm} pytorch: {line}", flush=True)
    return {"header": lines[0]["header"], "rows": lines[1:]}


def report(results: list[dict[str, Any]], side: int, runs: int) -> str:
    header = results[0]["peer"]["header"]
    weights = ", ".join(
        f"{r['algorithm']}: ours {r['ours']['weights']}, {r['peer']['classes']} classes" for r in results
    )
    lines = [
        f"One forward pass at {side}x{side}, {available_cpus()} threads, median of {runs} after warm-up. Weights: "
        f"{weights}; PyTorch's random. PyTorch {header['torch']}, torchvision {header['torchvision']} in "
        "`.venv-peer` (`make peer-venv`). Ours: INT8 is the model training kept (the INT8 step's plan, checked on "
        "the job's pictures), or for random weights our quantizer's first plan.",
        "",
        "| model | framework | variant | s | GMAC/s | best PyTorch / this |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    summary = []
    for result in results:
        algorithm, ours_, peer_ = result["algorithm"], result["ours"], result["peer"]
        timed = [r for r in peer_["rows"] if "seconds" in r]
        best_peer = min(timed, key=lambda r: r["seconds"])
        for framework, rows, gmac in (
            ("gluonseg", ours_["rows"], ours_["gmac"]),
            ("PyTorch", peer_["rows"], peer_["header"]["gmac"]),
        ):
            for row in rows:
                if "error" in row:
                    lines.append(f"| {algorithm} | {framework} | {row['variant']} | failed: {row['error']} | | |")
                    continue
                lines.append(
                    f"| {algorithm} | {framework} | {row['variant']} | {row['seconds']:.3f} | "
                    f"{gmac / row['seconds']:.0f} | {best_peer['seconds'] / row['seconds']:.2f}x |"
                )
        best_ours = min(ours_["rows"], key=lambda r: r["seconds"])
        ratio = best_peer["seconds"] / best_ours["seconds"]
        compile_row = next((r for r in timed if "compile" in r["variant"]), None)
        summary.append(
            f"- {algorithm}: ours at best {best_ours['variant']} {best_ours['seconds']:.3f} s, PyTorch at best "
            f"{best_peer['variant']} {best_peer['seconds']:.3f} s: **{ratio:.2f}x**"
            f" (the issue's target: 1.5x). GMAC at {side}²: ours {ours_['gmac']:.1f} (GluonCV's deep stem), "
            f"torchvision's {peer_['header']['gmac']:.1f}."
            + (f" torch.compile took {compile_row['setup_s']:.0f} s to compile." if compile_row else "")
        )
    return "\n".join([*lines, "", *summary])


def classes_of(folder: Path) -> int:
    return int(json.loads((folder / "hyperparams.json").read_text())["num_classes"])


def main() -> None:
    from benchmarks.common.report import machine, publish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", default="fcn,deeplab")
    parser.add_argument("--side", type=int, default=480)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--model", action="append", default=[], help="ALGORITHM=DIR: our side runs this trained folder")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--section", default="pytorch peer")
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.model)
    if not args.peer_python.exists():
        raise SystemExit(f"{args.peer_python} is missing: `make peer-venv` makes the PyTorch environment")
    print(machine(), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        for algorithm in args.algorithms.split(","):
            trained = Path(given[algorithm]) if algorithm in given else None
            classes = classes_of(trained) if trained else args.classes
            ours_ = ours(algorithm, work, classes, args.side, args.runs, trained)
            peer_ = peer(args.peer_python, algorithm, classes, args.side, args.runs)
            peer_["classes"] = classes
            results.append({"algorithm": algorithm, "ours": ours_, "peer": peer_})
    publish(args.section, report(results, args.side, args.runs), record=not args.no_record)


if __name__ == "__main__":
    main()
