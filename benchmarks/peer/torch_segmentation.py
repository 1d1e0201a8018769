"""The PyTorch side of benchmarks.pytorch_peer: torchvision's FCN / DeepLabV3 on ResNet-50, run the ways a
PyTorch user would on a CPU, one JSON line per variant on stdout.

Runs in its own environment (`make peer-venv`: torch and gluoncv cannot share one) and imports nothing of
gluonseg. Random weights (torchvision's pretrained ones cannot be downloaded here; a forward pass costs the same
whatever their values). Variants: FP32; FP32 channels_last; BF16 autocast + channels_last; torch.compile (FP32,
and BF16 where the CPU has BF16 instructions); INT8 by FX graph-mode post-training quantization with the x86
backend. A variant that fails is reported with its error, not hidden.

Run: .venv-peer/bin/python benchmarks/peer/torch_segmentation.py --algorithm fcn [--classes 21] [--side 480]
     [--runs 5] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torchvision.models import segmentation

NETWORKS = {"fcn": segmentation.fcn_resnet50, "deeplab": segmentation.deeplabv3_resnet50}


def build(algorithm: str, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return NETWORKS[algorithm](weights=None, weights_backbone=None, num_classes=classes, aux_loss=False).eval()


def bf16_cpu() -> bool:
    flags = open("/proc/cpuinfo").read().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def median_seconds(run: Callable[[], Any], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gmacs(model: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 2e9  # a multiply-add is two flops


def int8_model(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """FX graph-mode post-training static quantization, x86 backend (fbgemm/onednn kernels), calibrated on a few
    inputs: the INT8 path torchvision's segmentation models can take without code changes."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=(x,))
    with torch.inference_mode():
        for seed in range(4):
            prepared(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))
    return convert_fx(prepared)


Builder = Callable[[], Callable[[], Any]]


def variants(fresh: Callable[[], torch.nn.Module], x: torch.Tensor) -> list[tuple[str, Builder]]:
    """(name, builder): each builder makes its own model (layout changes are in place) and returns the call to
    time; compilation happens in its first call."""

    def plain() -> Callable[[], Any]:
        model = fresh()
        return lambda: model(x)

    def channels_last() -> Callable[[], Any]:
        m, xc = fresh().to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        return lambda: m(xc)

    def bf16() -> Callable[[], Any]:
        m, xc = fresh().to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

        def run() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(xc)

        return run

    def compiled(dtype: torch.dtype | None) -> Builder:
        def make() -> Callable[[], Any]:
            m = torch.compile(fresh().to(memory_format=torch.channels_last))
            xc = x.contiguous(memory_format=torch.channels_last)

            def run() -> Any:
                with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
                    return m(xc)

            return run

        return make

    def int8() -> Callable[[], Any]:
        q = int8_model(fresh(), x)
        return lambda: q(x)

    found = [
        ("fp32", plain),
        ("fp32 channels_last", channels_last),
        ("bf16 autocast + channels_last", bf16),
        ("fp32 torch.compile", compiled(None)),
    ]
    if bf16_cpu():
        found.append(("bf16 torch.compile", compiled(torch.bfloat16)))
    found.append(("int8 FX PTQ (x86)", int8))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", choices=sorted(NETWORKS), required=True)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--side", type=int, default=480)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    x = torch.randn(1, 3, args.side, args.side, generator=torch.Generator().manual_seed(0))
    header = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "gmac": gmacs(build(args.algorithm, args.classes), x),
        "bf16_cpu": bf16_cpu(),
    }
    print(json.dumps({"header": header}), flush=True)
    for name, make in variants(lambda: build(args.algorithm, args.classes), x):
        model_started = time.perf_counter()
        try:
            with torch.inference_mode():
                run = make()
                first = time.perf_counter()
                run()  # the first call: compilation, layout conversions, allocation
                setup = time.perf_counter() - model_started
                first_s = time.perf_counter() - first
                seconds = median_seconds(run, args.runs, warmup=1)
            row = {"variant": name, "seconds": seconds, "setup_s": setup, "first_call_s": first_s}
        except Exception as exc:  # a path that does not work on this CPU or build is a result too
            row = {"variant": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
            traceback.print_exc(file=sys.stderr)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
