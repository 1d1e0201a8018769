"""The machine limit: this CPU's FP32 GEMM/convolution rate (the roof), and each model's MACs per image.

Every other benchmark holds its achieved GMAC/s against the FP32 roof measured here, in the same run:
the best rate over a 2048^3 GEMM (oneDNN FullyConnected) and the convolution shapes that dominate a
dilated ResNet-50 at output stride 8 (3x3 and 1x1 convolutions on 30x30 and 60x60 feature maps).
Each is timed at 1 thread (what one serving worker gets) and at all cores, each in its own process,
because MXNet's OpenMP pool is sized once, at import. INT8 and BF16 rates of the same convolutions are
measured too, for context: they are the roofs of the lower-precision graphs.

MACs are counted from the network's graph (`count_macs`): convolutions only, nothing else in these
networks has a meaningful multiply-accumulate count; taps that fall on zero padding are not counted.

Run: .venv/bin/python -m benchmarks.machine_limit [--crop 240 --image 800x600 --train-crop 128] [--macs-only]
     [--no-record]
Results also go to benchmarks/results/machine_limit.json for the other benchmarks.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common.report import publish
from gluonseg.util import available_cpus

RESULTS = Path(__file__).resolve().parent / "results" / "machine_limit.json"
REPEATS = 5
# (name, in_channels, out_channels, side, kernel, dilation): the layers that carry most of the MACs.
CONV_SHAPES = [
    ("conv3x3 512ch 30x30 dil2", 512, 512, 30, 3, 2),
    ("conv3x3 256ch 60x60 dil1", 256, 256, 60, 3, 1),
    ("conv1x1 1024->256 60x60", 1024, 256, 60, 1, 1),
    ("conv1x1 512->2048 30x30", 512, 2048, 30, 1, 1),
]
GEMM_N = 2048


# -- MAC counting


def _tuple(attrs: dict[str, str], key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = attrs.get(key)
    return tuple(ast.literal_eval(value)) if value not in (None, "()", "") else default


def _taps_inside(out_len: int, in_len: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """(output position, kernel tap) pairs along one axis whose input falls inside the feature map."""
    return sum(1 for o in range(out_len) for k in range(kernel) if 0 <= o * stride - pad + k * dilation < in_len)


def count_macs(net: Any, height: int, width: int) -> tuple[int, int]:
    """(MACs, dense MACs) of one forward pass of `net` on a (1, 3, height, width) input.

    Dense counts every kernel tap of every output (output elements x in-channels/groups x kernel area).
    MACs counts only taps that read inside the feature map: taps on zero padding do no arithmetic in
    oneDNN's direct convolutions. The two differ little except for dilations as large as the feature
    map (DeepLab's ASPP: 12, 24, 36 on 30x30 features), where most taps land in the padding.
    """
    import mxnet as mx

    out = net(mx.sym.var("data"))
    sym = mx.sym.Group(list(out)) if isinstance(out, list | tuple) else out
    internals = sym.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape_partial(data=(1, 3, height, width))
    shapes = {**dict(zip(internals.list_outputs(), out_shapes)), **dict(zip(internals.list_arguments(), arg_shapes))}
    nodes = json.loads(sym.tojson())["nodes"]

    def shape_of(entry: list[int]) -> tuple[int, ...]:
        producer = nodes[entry[0]]
        if producer["op"] == "null":
            return shapes[producer["name"]]
        name = f"{producer['name']}_output"
        return shapes[name] if name in shapes else shapes[f"{name}{entry[1]}"]

    total = dense = 0
    for node in nodes:
        if node["op"] != "Convolution":
            continue
        attrs = node.get("attrs", {})
        _, _, in_h, in_w = shape_of(node["inputs"][0])
        out_shape = shapes[f"{node['name']}_output"]
        weight = shape_of(node["inputs"][1])  # (out, in / groups, kh, kw)
        kh, kw = weight[2], weight[3]
        stride, pad, dilate = (_tuple(attrs, k, (d, d)) for k, d in (("stride", 1), ("pad", 0), ("dilate", 1)))
        dense += out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3] * weight[1] * kh * kw
        taps_y = _taps_inside(out_shape[2], in_h, kh, stride[0], pad[0], dilate[0])
        taps_x = _taps_inside(out_shape[3], in_w, kw, stride[1], pad[1], dilate[1])
        total += out_shape[0] * out_shape[1] * weight[1] * taps_y * taps_x
    return total, dense


def model_macs(algorithm: str, crop: int, height: int, width: int, aux: bool) -> tuple[int, int]:
    """(MACs, dense MACs) of a ResNet-50 `algorithm` network (5 classes) built for a height x width input.

    PSP and DeepLab graphs need sides divisible by 8 (their `predict()` takes any size); other sizes are
    counted at the next multiple of 8, which overstates them by under 8 pixels a side.
    """
    from gluonseg.models import build_network

    if algorithm in ("psp", "deeplab"):
        height, width = -(-height // 8) * 8, -(-width // 8) * 8
    net = build_network(algorithm, "resnet-50", 5, crop, 520, False, aux=aux, height=height, width=width)
    return count_macs(net, height, width)


# -- rates (run in a child process per thread count)


def _best_rate(run, macs: int) -> float:
    run().wait_to_read()
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run().wait_to_read()
        best = min(best, time.perf_counter() - start)
    return macs / best / 1e9


def _conv_block(cin: int, cout: int, kernel: int, dilation: int):
    from mxnet import gluon

    block = gluon.nn.HybridSequential()
    block.add(gluon.nn.Conv2D(cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, in_channels=cin))
    block.initialize()
    return block


def measure_rates() -> dict[str, Any]:
    """GMAC/s of the FP32 GEMM and convolutions, and of INT8/BF16 convolutions, at this process's threads."""
    import warnings

    import mxnet as mx
    from mxnet.contrib import amp
    from mxnet.contrib.quantization import quantize_net_v2

    warnings.simplefilter("ignore")
    rows: dict[str, dict[str, float]] = {}
    a = mx.nd.random.normal(shape=(GEMM_N, GEMM_N))
    w = mx.nd.random.normal(shape=(GEMM_N, GEMM_N))
    rows[f"GEMM {GEMM_N}^3"] = {
        "fp32": _best_rate(lambda: mx.nd.FullyConnected(a, w, no_bias=True, num_hidden=GEMM_N), GEMM_N**3)
    }
    for name, cin, cout, side, kernel, dilation in CONV_SHAPES:
        macs = cin * cout * kernel * kernel * side * side
        x = mx.nd.random.normal(shape=(1, cin, side, side))
        block = _conv_block(cin, cout, kernel, dilation)
        block.hybridize(static_alloc=True, static_shape=True)
        row = {"fp32": _best_rate(lambda b=block, x=x: b(x), macs)}
        calib = mx.io.NDArrayIter(data=x.asnumpy(), batch_size=1)
        qblock = quantize_net_v2(
            _conv_block(cin, cout, kernel, dilation), calib_data=calib, calib_mode="naive", quantized_dtype="auto"
        )
        qblock.hybridize(static_alloc=True, static_shape=True)
        row["int8"] = _best_rate(lambda b=qblock, x=x: b(x), macs)
        fp = _conv_block(cin, cout, kernel, dilation)
        fp.hybridize()
        fp(x).wait_to_read()
        bblock = amp.convert_hybrid_block(fp, target_dtype="bfloat16", ctx=mx.cpu(), cast_optional_params=True)
        bblock.hybridize(static_alloc=True, static_shape=True)
        row["bf16"] = _best_rate(lambda b=bblock, x=x: b(x), macs)
        rows[name] = row
    return rows


def rates_at(threads: int) -> dict[str, Any]:
    """`measure_rates` in a child process whose OpenMP pool has `threads` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MXNET_CPU_WORKER_NTHREADS": "1"}
    code = "import json, benchmarks.machine_limit as m; print(json.dumps(m.measure_rates()))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=Path.cwd())
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def roofs(rows: dict[str, Any]) -> dict[str, float]:
    """The best rate per precision: FP32 over GEMM and convolutions, INT8/BF16 over convolutions."""
    best: dict[str, float] = {}
    for row in rows.values():
        for precision, rate in row.items():
            best[precision] = max(best.get(precision, 0.0), rate)
    return best


def load_results() -> dict[str, Any] | None:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else None


def all_macs(crop: int, width: int, height: int, train_crop: int) -> dict[str, Any]:
    """MACs (and dense MACs) of each model at every size the benchmarks use."""
    from gluonseg.inference.geometry import resized_size, tile_starts

    new_h, new_w = resized_size(height, width, crop)
    tiles = len(tile_starts(max(new_h, crop), crop)) * len(tile_starts(max(new_w, crop), crop))
    macs: dict[str, dict[str, int]] = {}
    dense: dict[str, dict[str, int]] = {}
    for algorithm in ("fcn", "psp", "deeplab"):
        # GluonCV's FCN.predict runs the aux head too when the network has one (as a loaded SageMaker model does).
        stock_aux = algorithm == "fcn"
        sizes = {
            "tile": model_macs(algorithm, crop, crop, crop, aux=False),
            "native": model_macs(algorithm, crop, height, width, aux=stock_aux),
            "whole": model_macs(algorithm, crop, height, width, aux=False),  # ours at native scale
            "resized": model_macs(algorithm, crop, new_h, new_w, aux=stock_aux),
            "train_crop_forward": model_macs(algorithm, train_crop, train_crop, train_crop, aux=True),
        }
        macs[algorithm] = {k: v[0] for k, v in sizes.items()}
        dense[algorithm] = {k: v[1] for k, v in sizes.items()}
        macs[algorithm]["request"] = tiles * macs[algorithm]["tile"]
        dense[algorithm]["request"] = tiles * dense[algorithm]["tile"]
    return {"resized": [new_w, new_h], "tiles": tiles, "macs": macs, "dense_macs": dense}


def render(results: dict[str, Any]) -> str:
    measured, roof = results["rates"], results["roof"]
    thread_counts = sorted(int(t) for t in measured)
    width, height = results["image"]
    new_w, new_h = results["resized"]
    crop, tiles, train_crop = results["crop"], results["tiles"], results["train_crop"]
    cores = results["cores"]
    lines = [
        "Rates in GMAC/s (best of 5 timed runs after a warm-up), each thread count in its own process. "
        "The FP32 roof is the best FP32 rate of the row set; every achieved rate elsewhere is a fraction of it. "
        f"The serving benchmark runs {cores} single-threaded workers and is held against {cores} x the 1-thread "
        f"roof = {cores * roof['1']['fp32']:.1f} GMAC/s; the {cores}-thread column is what one process with "
        f"{cores} threads got (it falls below {cores} x 1 thread when another job holds a core: shared machine).",
        "",
        "| operation | "
        + " | ".join(f"{p} @ {t} thread(s)" for t in thread_counts for p in ("fp32", "int8", "bf16"))
        + " |",
        "| --- |" + " --- |" * (3 * len(thread_counts)),
    ]
    for name in measured[str(thread_counts[0])]:
        cells = []
        for t in thread_counts:
            row = measured[str(t)][name]
            cells += [f"{row[p]:.1f}" if p in row else "-" for p in ("fp32", "int8", "bf16")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| **roof** | "
        + " | ".join(f"**{roof[str(t)].get(p, 0):.1f}**" for t in thread_counts for p in ("fp32", "int8", "bf16"))
        + " |"
    )
    lines += [
        "",
        f"GMACs per image (ResNet-50 backbone, 5 classes; serving crop {crop}, picture {width}x{height}: the "
        f"Predictor runs it whole at native scale, the default, and at crop scale resizes it to {new_w}x{new_h} and "
        f"covers it with {tiles} tiles). First figure: taps that read inside "
        "the feature map (the arithmetic done; used for every rate); in brackets: dense, every kernel tap of every "
        "output. They differ where dilations reach past the feature map (DeepLab's ASPP, dilation 12/24/36).",
        "",
        f"| model | one {crop}x{crop} tile | per {width}x{height} request, ours at native scale | "
        f"per {width}x{height} request, ours at crop scale ({tiles} tiles) | "
        f"stock GluonCV `predict()` at {width}x{height} | stock `predict()` at {new_w}x{new_h} | "
        f"training forward at {train_crop}x{train_crop} (with aux head) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for algorithm, m in results["macs"].items():
        d = results["dense_macs"][algorithm]
        cells = [
            f"{m[k] / 1e9:.1f} ({d[k] / 1e9:.1f})"
            for k in ("tile", "whole", "request", "native", "resized", "train_crop_forward")
        ]
        lines.append(f"| {algorithm} | " + " | ".join(cells) + " |")
    lines.append(
        "\nStock FCN `predict()` also runs the auxiliary head (a model loaded from SageMaker's params has one); "
        "PSP/DeepLab `predict()` skip it."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=240, help="the serving crop (tile) size")
    parser.add_argument("--image", default="800x600", help="the benchmark picture, WIDTHxHEIGHT")
    parser.add_argument("--train-crop", type=int, default=128, help="the training benchmark's crop")
    parser.add_argument("--macs-only", action="store_true", help="recount MACs, keep the rates already measured")
    parser.add_argument("--no-record", action="store_true", help="print, but leave BENCHMARKS.md alone")
    args = parser.parse_args()
    width, height = (int(v) for v in args.image.lower().split("x"))
    previous = load_results()
    if args.macs_only and previous:
        cores, measured = previous["cores"], previous["rates"]
    else:
        cores = available_cpus()
        measured = {str(t): rates_at(t) for t in sorted({1, cores})}
    results = {
        "cores": cores,
        "rates": measured,
        "roof": {t: roofs(rows) for t, rows in measured.items()},
        "crop": args.crop,
        "image": [width, height],
        "train_crop": args.train_crop,
        **all_macs(args.crop, width, height, args.train_crop),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    publish("machine-limit", render(results), not args.no_record)


if __name__ == "__main__":
    main()
