"""Which nodes of an INT8 model stay FP32, and which calibration: measured on the check pictures.

The INT8 step (gluonseg.inference.int8_onnx) hands `control` a way to measure one plan (the nodes kept
FP32 and the calibration method -> the share of check pixels whose class equals MXNet FP32's). The
plans, in order:
1. the ends: the first convolution (the only one that sees raw pixels) and the classifier (raw logits), with
   each calibration method in turn (MinMax first: the quickest; then Entropy, whose ranges ignore the rare
   extreme activations that widen MinMax's: on a trained FCN MinMax reached 98.6% of the check pixels and
   Entropy 99.8%, BENCHMARKS.md "int8 choices"); the first that reaches the bar is kept;
2. else, with the method that came closest, sensitivity: the ends plus one group at a time (the stem, each
   backbone stage, the head: every node of the region, see node_groups), each group's gain in agreement
   measured. A single group that reaches the bar wins, the one with the fewest multiply-adds first;
3. else the groups are added one by one in order of measured gain per FP32 multiply-add (the agreement a
   group buys for the speed it costs), until the bar is reached or the FP32 share would pass MAX_FP32_SHARE,
   where INT8 would no longer pay for itself: then no model is kept, and the record says why.
The multiply-adds are counted on a TIMING_SIDE x TIMING_SIDE input, the size `auto` times at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gluonseg.inference.choices import TIMING_SIDE

MAX_FP32_SHARE = 0.5
STEM, HEAD = "stem", "head"
_STAGE = re.compile(r"(?:layers?|down)(\d)_")  # GluonCV's ResNet blocks: ...layers3_conv0, ...down3_conv0

METHODS = ("MinMax", "Entropy")
Measure = Callable[[list[str], str], dict[str, Any]]  # (FP32 nodes, calibration method) -> {"agreement": float, ...}


def convolutions(model: Any) -> list[Any]:
    return [node for node in model.graph.node if node.op_type == "Conv"]


def end_convolutions(model: Any, num_classes: int) -> list[str]:
    """The first convolution and the classifier (the last with num_classes outputs, else the last)."""
    convs = convolutions(model)
    if not convs:
        return []
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    classifiers = [c.name for c in convs if weights.get(c.input[1], (0,))[0] == num_classes]
    return list(dict.fromkeys([convs[0].name, *(classifiers[-1:] or [convs[-1].name])]))


def node_groups(model: Any, ends: Sequence[str]) -> dict[str, list[str]]:
    """{group: node names}, in graph order: stem, stage1..4, head; every node of the region, not only its
    convolutions (the head's concatenations, poolings and resizes cost more agreement than its convolutions:
    a DeepLabV3 went from 99.16% to 99.79% of the check pixels with its whole head in FP32, and stayed at
    99.16% with only the head's convolutions); the ends in none.

    Stages are told apart by the names GluonCV gives them; a graph whose names say nothing of stages has no
    groups (only the ends are tried)."""
    nodes = list(model.graph.node)
    stages = [_STAGE.search(node.name) for node in nodes]
    staged = [i for i, found in enumerate(stages) if found]
    if not staged:
        return {}
    first, last = staged[0], staged[-1]
    groups: dict[str, list[str]] = {}
    for i, node in enumerate(nodes):
        found = stages[i]
        name = f"stage{found.group(1)}" if found else STEM if i < first else HEAD if i > last else None
        if name is not None and node.name not in ends:
            groups.setdefault(name, []).append(node.name)
    return groups


def conv_macs(model: Any, side: int = TIMING_SIDE) -> dict[str, int]:
    """Multiply-adds of each Conv node on a (1, 3, side, side) input (ONNX shape inference, constants
    propagated so that resize targets computed from the input's shape resolve)."""
    import onnx
    from onnx import shape_inference

    sized = onnx.ModelProto()
    sized.CopyFrom(model)
    del sized.graph.value_info[:]
    for dim, value in zip(sized.graph.input[0].type.tensor_type.shape.dim, (1, 3, side, side)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(sized, data_prop=True)
    spatial = {
        info.name: [d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim][2:]
        for info in [*inferred.graph.value_info, *inferred.graph.output]
    }
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    macs = {}
    for conv in convolutions(model):
        per_pixel = 1
        for dim in weights.get(conv.input[1], ()):  # (out, in / groups, kh, kw)
            per_pixel *= dim
        pixels = 1
        for dim in spatial.get(conv.output[0], []):
            pixels *= dim
        macs[conv.name] = per_pixel * pixels
    return macs


def fallback_order(gains: dict[str, float], group_macs: dict[str, int]) -> list[str]:
    """Groups by measured gain per multiply-add, best first; those that gained nothing last, smallest first."""
    helpful = sorted((g for g in gains if gains[g] > 0), key=lambda g: -gains[g] / max(1, group_macs[g]))
    rest = sorted((g for g in gains if gains[g] <= 0), key=lambda g: group_macs[g])
    return helpful + rest


@dataclass
class Outcome:
    kept: dict[str, Any] | None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)  # group -> agreement gained over the ends alone
    order: list[str] = field(default_factory=list)  # the fallback order the sensitivity gave
    why_not: str | None = None


def control(
    ends: Sequence[str],
    groups: dict[str, list[str]],
    macs: dict[str, int],
    measure: Measure,
    bar: float,
    max_share: float = MAX_FP32_SHARE,
    log: Callable[[dict[str, Any]], None] = lambda attempt: None,
    methods: Sequence[str] = METHODS,
) -> Outcome:
    """Search the plans of the module docstring; `measure` quantizes with a plan's FP32 nodes and calibration
    method, and checks it."""
    total = max(1, sum(macs.values()))
    group_macs = {g: sum(macs.get(n, 0) for n in nodes) for g, nodes in groups.items()}
    outcome = Outcome(kept=None)

    def attempt(chosen: Sequence[str], purpose: str, method: str) -> dict[str, Any]:
        nodes = [*ends, *(n for g in chosen for n in groups[g])]
        found = dict(measure(nodes, method))
        found.update(
            purpose=purpose,
            calibration=method,
            fp32_groups=list(chosen),
            fp32_nodes=nodes,
            fp32_mac_share=round(sum(macs.get(n, 0) for n in nodes) / total, 4),
        )
        outcome.attempts.append(found)
        log(found)
        return found

    firsts = []
    for method in methods:
        firsts.append(attempt([], "the ends", method))
        if firsts[-1]["agreement"] >= bar:
            outcome.kept = firsts[-1]
            return outcome
    first = max(firsts, key=lambda a: a["agreement"])  # the earlier method on a tie: the quicker
    method = first["calibration"]
    if not groups:
        outcome.why_not = f"the ends in FP32 reached {first['agreement']:.3%}, and the graph names no stages to keep"
        return outcome
    singles = {g: attempt([g], "sensitivity", method) for g in groups}
    outcome.sensitivity = {g: round(a["agreement"] - first["agreement"], 6) for g, a in singles.items()}
    passing = [a for a in singles.values() if a["agreement"] >= bar and a["fp32_mac_share"] <= max_share]
    if passing:
        outcome.kept = min(passing, key=lambda a: a["fp32_mac_share"])
        return outcome
    outcome.order = fallback_order(outcome.sensitivity, group_macs)
    chosen: list[str] = []
    for group in outcome.order:
        share = sum(group_macs[g] for g in [*chosen, group]) / total
        if share > max_share:
            break
        chosen.append(group)
        if len(chosen) == 1:
            continue  # measured alone already, and it missed the bar
        found = attempt(chosen, "fallback", method)
        if found["agreement"] >= bar:
            outcome.kept = found
            return outcome
    outcome.why_not = (
        f"no plan reached {bar:.1%} of the check pixels as MXNet FP32 with at most {max_share:.0%} of the "
        f"multiply-adds in FP32 (best {max(a['agreement'] for a in outcome.attempts):.3%})"
    )
    return outcome
