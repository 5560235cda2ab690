"""Markdown tables of a benchmark :class:`~genneg.bench.report.Report`."""

from __future__ import annotations

import math


def _num(v, fmt=".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if isinstance(v, (int, float)):
        return format(v, fmt)
    return str(v)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(report) -> str:
    m = report.meta
    out = [
        f"Measured {m.get('date')} on {m.get('cpu')} ({m.get('cpu_count')} cores, torch "
        f"{m.get('torch')}, {m.get('torch_threads')} thread(s), device {m.get('device', 'cpu')})"
        f"; matmul {_num(m.get('matmul_flops', 0) / 1e9)} GFLOP/s; total "
        f"{_num(m.get('seconds'), '.0f')} s.",
        "",
    ]
    oracle = report.find("oracle")
    if oracle:
        out += ["**Oracle** (batch of training rows; naive: one sample per call)", ""]
        out.append(
            _table(
                ["preset", "samples/s", "elements/s", "naive samples/s", "vectorised ×"],
                [
                    [
                        r["preset"],
                        _num(r["samples_per_s"]),
                        _num(r["elements_per_s"]) if r["elements_per_sample"] != 1 else "-",
                        _num(r["naive_samples_per_s"]),
                        _num(r["vectorised_speedup"]),
                    ]
                    for r in oracle
                ],
            )
        )
        out.append("")
    sampler = report.find("sampler")
    if sampler:
        out += [
            "**Sampler** (untrained classifiers; cost and FLOPs as multiples of the baseline's;"
            " `stackK` batched as one network, `stackK-loop` classifier by classifier, `-bf16`"
            " its products in bf16 where the CPU or GPU multiplies bf16 natively)",
            "",
        ]
        out.append(
            _table(
                [
                    "preset",
                    "model",
                    "NFE",
                    "sample·steps/s",
                    "cost ×",
                    "FLOP ×",
                    "MFLOP/eval",
                    "% of matmul peak",
                    "peak RSS MiB",
                ],
                [
                    [
                        r["preset"],
                        r["model"],
                        r["nfe_per_sample"],
                        _num(r["sample_steps_per_s"]),
                        _num(r["cost_vs_baseline"], ".2f"),
                        _num(r.get("flops_vs_baseline"), ".2f"),
                        _num(r["flops_per_eval"] / 1e6),
                        _num(100 * r["fraction_of_peak"] if r["fraction_of_peak"] else None, ".2g"),
                        _num(r.get("peak_cuda_mib", r["peak_rss_mib"]), ".0f"),
                    ]
                    for r in sampler
                ],
            )
        )
        out.append("")
    train = report.find("train")
    if train:
        out += [
            "**Training step** (distill: a residual or fine-tuned student against two stacked"
            " untrained classifiers; x faster: against a fresh teacher evaluation every step)",
            "",
        ]
        out.append(
            _table(
                ["preset", "model", "params", "batch", "ms/step", "x faster", "peak RSS MiB"],
                [
                    [
                        r["preset"],
                        r["model"],
                        r["params"],
                        r["batch"],
                        _num(1e3 * r["seconds_per_step"]),
                        _num(r["speedup_vs_fresh"], ".2f") if "speedup_vs_fresh" in r else "",
                        _num(r.get("peak_cuda_mib", r["peak_rss_mib"]), ".0f"),
                    ]
                    for r in train
                ],
            )
        )
        out.append("")
    roof = report.find("roofline")
    if roof:
        out += [
            "**Against the matmul rate** (every kind of step of the run at its own batch; "
            "FLOPs: torch's formulas for the products, backward passes included; % layer "
            "matmul: of one `[batch, width] @ [width, width]` product's rate at the network's "
            "width; run steps: how many the preset takes)",
            "",
        ]
        out.append(
            _table(
                [
                    "preset",
                    "step",
                    "batch",
                    "ms",
                    "MFLOP",
                    "GFLOP/s",
                    "% layer matmul",
                    "run steps",
                ],
                [
                    [
                        r["preset"],
                        r["step"],
                        r["batch"],
                        _num(1e3 * r["seconds"]),
                        _num(r["flops"] / 1e6),
                        _num(r["achieved_flops"] / 1e9),
                        _num(100 * r["fraction_of_layer_matmul"], ".3g"),
                        r["run_steps"] or "-",
                    ]
                    for r in roof
                ],
            )
        )
        for r in report.find("roofline-run"):
            out.append(
                f"- {r['preset']}: its training takes {r['training_seconds']:.0f} s at these "
                f"rates; all its products at the layer matmul rate would take "
                f"{r['floor_seconds']:.0f} s ({r['floor_vs_measured']:.2f}x)"
            )
        out.append("")
    threads = report.find("threads")
    if threads:
        out += [
            "**Threads** (a training loop in a fresh process, alone and beside one"
            " `python -c 'while True: pass'`; threads: the count at the end)",
            "",
        ]
        out.append(
            _table(
                [
                    "threads",
                    "steps",
                    "s alone",
                    "s beside busy",
                    "× slower",
                    "threads (alone / busy)",
                ],
                [
                    [
                        r["setting"],
                        r["steps"],
                        _num(r["seconds_alone"]),
                        _num(r["seconds_beside_busy"]),
                        _num(r["slowdown"], ".2f"),
                        f"{r['threads_alone']} / {r['threads_beside_busy']}",
                    ]
                    for r in threads
                ],
            )
        )
        out.append("")
    qual = report.find("quality")
    if qual:
        out += ["**Quality** (fixed small budget)", ""]
        out.append(
            _table(
                ["preset", "source", "stage", "infraction %", "ELBO (nats/dim)"],
                [
                    [
                        r["preset"],
                        r["source"],
                        r["stage"],
                        f"{r['infraction']:.2f} ± {r['infraction_se']:.2f}",
                        f"{r['elbo']:.3f} ± {r['elbo_se']:.3f} ({r['elbo_kind']})",
                    ]
                    for r in qual
                ],
            )
        )
        for r in report.find("quality-run"):
            out.append(
                f"- {r['preset']}: {r['source']} in {r['seconds']:.0f} s"
                + (f" on {r['device']}" if r.get("device", "cpu") != "cpu" else "")
                + (f"; the loop stopped early: {r['stopped']}" if r["stopped"] else "")
            )
        out.append("")
    rej = report.find("rejection")
    if rej:
        deltas = list(rej[0]["parallel"])
        out += [
            "**Against rejection sampling** (per oracle-valid sample; N: parallel draws "
            "for one valid with probability 1 − δ, ⌈log δ / log ε⌉)",
            "",
        ]
        out.append(
            _table(
                ["preset", "model", "ε", "draws/valid", "NFE/valid", "ms/valid", "MFLOP/valid"]
                + [f"N (δ={d})" for d in deltas],
                [
                    [
                        r["preset"],
                        r["stage"],
                        _num(r["epsilon"], ".4f"),
                        _num(r["draws_per_valid"]),
                        _num(r.get("nfe_per_valid")),
                        _num(1e3 * r["seconds_per_valid"] if "seconds_per_valid" in r else None),
                        _num(r["flops_per_valid"] / 1e6 if r.get("flops_per_valid") else None),
                    ]
                    + [_num(r["parallel"][d]) for d in deltas]
                    for r in rej
                ],
            )
        )
        out.append("")
    gpu = report.find("gpu-sampler")
    if gpu:
        info = m.get("gpu_sampler", {})
        peaks = info.get("matmul_peaks", {})
        out += [
            f"**GPU sampler** ({info.get('device')}; one sampler call of the whole batch,"
            " all steps; % of peak: of the measured 8192³ matmul at that precision "
            "(" + ", ".join(f"{k} {v / 1e12:.0f}" for k, v in peaks.items()) + " TFLOP/s) and"
            " of the datasheet's dense rate; error: relative RMS of one evaluation against"
            " fp32; Δ infraction in standard errors from fp32's)",
            "",
        ]
        out.append(
            _table(
                [
                    "preset",
                    "models from",
                    "model",
                    "precision",
                    "batch",
                    "NFE",
                    "samples/s",
                    "TFLOP/s",
                    "% matmul",
                    "% datasheet",
                    "error",
                    "infraction %",
                    "Δ (s.e.)",
                    "GPU MiB",
                ],
                [
                    [
                        r["preset"],
                        "trained run" if r["source"] != "untrained" else "untrained",
                        r["model"],
                        r["precision"],
                        r["batch"],
                        r["nfe_per_sample"],
                        _num(r["samples_per_s"]),
                        _num(r["achieved_flops"] / 1e12),
                        _num(100 * r["fraction_of_matmul_peak"], ".2g"),
                        _num(
                            100 * r["fraction_of_datasheet_peak"]
                            if r["fraction_of_datasheet_peak"]
                            else None,
                            ".2g",
                        ),
                        _num(r["eval_rel_error_vs_fp32"], ".1e"),
                        _num(100 * r["infraction"] if r["infraction"] is not None else None, ".3g")
                        + (
                            f" ± {100 * r['infraction_se']:.2g}"
                            if r["infraction_se"] is not None
                            else ""
                        ),
                        _num(r["infraction_diff_in_se"], ".2f"),
                        _num(r.get("peak_cuda_mib"), ".0f"),
                    ]
                    for r in gpu
                ],
            )
        )
        out.append("")
    known = {
        "oracle",
        "sampler",
        "train",
        "threads",
        "quality",
        "rejection",
        "data",
        "gpu-sampler",
        "roofline",
        "roofline-run",
    }
    other = [r for r in report.records if r["case"] not in known | {"quality-run"}]
    if other:
        out += ["**Other cases** (plugins' `register_benchmarks`)", ""]
        out.append(
            _table(
                ["plugin", "case", "values"],
                [
                    [
                        r["plugin"],
                        r["case"],
                        ", ".join(
                            f"{k}={_num(v) if isinstance(v, float) else v}"
                            for k, v in r.items()
                            if k not in ("plugin", "case")
                        ),
                    ]
                    for r in other
                ],
            )
        )
        out.append("")
    if report.errors:
        out += ["**Errors**", ""]
        out += [f"- {e['plugin']} {e['case']}: {e['error']}" for e in report.errors]
    return "\n".join(out)
