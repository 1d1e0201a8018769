"""The serving benchmark's report: its tables and the verdicts on its targets."""

from __future__ import annotations

from typing import Any

from benchmarks.common.pictures import PICTURE_SIZE
from benchmarks.common.tables import mark, mb, ms
from benchmarks.serving_variants import CALIBRATION_IMAGES, PRECISION, SERVED, VARIANTS


def macs_key(key: str) -> str:
    """Which MAC count of benchmarks.machine_limit one request of a variant costs."""
    return {"a": "native", "a'": "resized", "e": "request"}.get(key, "whole")


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
                f"| {algorithm} | {label} | {ms(s['latency_median_s'])} / {ms(s['latency_p90_s'])} | "
                f"{s['rps_1']:.2f} ({s['requests_1']}) | {s['rps_2']:.2f} ({s['requests_2']}) | "
                f"{s['rps_2'] / s['rps_1']:.2f}x | {s['rps_2'] / served['b']['rps_2']:.2f}x | "
                f"{s['rps_2'] / served['a']['rps_2']:.2f}x | {mb(s['peak_rss_bytes'])} | {macs / 1e9:.1f} | "
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
                f"| {algorithm} | {VARIANTS[key]} | {ms(p['decode'])} | {ms(p['preprocess'])} | "
                f"{ms(p['network'])} | {ms(p['postprocess'])} | {ms(p['encode'])} | {ms(p['total'])} | "
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
        steps = " -> ".join(f"{n}: {'/'.join(mb(v) for v in rss)}" for n, rss in mem["samples"])
        lines += [
            "",
            f"**Memory over {mem['requests']} requests** ({mem['algorithm']} {mem['precision'].upper()}, the fastest "
            f"variant, 2 clients, {mem['seconds']:.0f} s; decode, tiling, post-processing and encoding are the "
            "same code in every precision). Worker RSS in MB after n requests (one number per worker): "
            f"{steps}. Peak (VmHWM) per worker: {'/'.join(mb(v) for v in mem['peaks'])} MB. Largest growth from "
            f"after warm-up to the end: {growth / 2**20:+.1f} MB.",
        ]
    lines += ["", "**Targets**", ""] + results["verdicts"]
    return "\n".join(lines)


def verdicts(results: dict[str, Any], limit: dict[str, Any]) -> list[str]:
    out = []
    roof1 = limit["roof"]["1"]["fp32"]

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
            f"in-process {ms(p['a']['total'])} -> {ms(p['b']['total'])} ms per request); at equal output "
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
            f"- Memory: worker RSS {'/'.join(mb(v) for v in last)} MB after {mem['requests']} requests; flat "
            f"(growth < 20 MB): {mark(growth < 20)} ({growth:+.1f} MB)."
        )
    return out
