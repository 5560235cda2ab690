"""The benchmark runner behind ``python -m genneg.bench`` and ``tox -e bench``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from genneg.bench.measure import Budget, bench_preset, matmul_flops, peak_rss_mb
from genneg.bench.rejection import rejection_rows, rejection_table
from genneg.bench.report import Report
from genneg.plugins import get_registry

ABLATION_MARKS = ("-no-is", "-imbalanced", "-agent", "-scene")


def small_presets(registry) -> list[str]:
    """One small preset per plugin: the one named after the plugin, else its shortest name
    that is neither a ``-paper`` preset nor an ablation."""
    by_plugin: dict[str, list[str]] = {}
    for name, entry in registry.entries["presets"].items():
        if "paper" in name or any(m in name for m in ABLATION_MARKS):
            continue
        by_plugin.setdefault(entry.plugin, []).append(name)
    out = []
    for plugin, names in sorted(by_plugin.items()):
        out.append(plugin if plugin in names else min(names, key=lambda n: (len(n), n)))
    return out


def machine() -> dict:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_plugin_cases(registry, report: Report, names=None) -> None:
    """Run every registered benchmark case ``fn(report)`` (errors are recorded)."""
    for name in registry.names("benchmarks"):
        if names is not None and name not in names:
            continue
        entry = registry.entries["benchmarks"][name]
        with report.case(f"plugin:{entry.plugin}/{name}"):
            entry.obj(report)


def run_benchmarks(
    presets=None,
    *,
    registry=None,
    budget: Budget | None = None,
    device: str | None = None,
    plugin_cases: bool = True,
    run_dirs=(),
    log=print,
) -> Report:
    """Benchmark the small preset of each installed plugin (or ``presets``), run the plugins'
    benchmark cases, and add the rejection tables of finished ``run_dirs``."""
    registry = registry or get_registry()
    budget = budget or Budget()
    report = Report()
    report.sections["machine"] = machine()
    with report.case("machine"):
        dev = device or "cpu"
        peak = matmul_flops(dev)
        report.add("matmul_flop_per_s", peak, "FLOP/s", device=dev)
    report.sections["machine"]["matmul_flop_per_s"] = peak
    report.sections["budget"] = {k: getattr(budget, k) for k in budget.__attrs_attrs__.__dict__}
    report.sections["presets"] = {}
    for name in presets if presets is not None else small_presets(registry):
        t0 = time.perf_counter()
        log(f"bench: {name} ...")
        report.sections["presets"][name] = bench_preset(
            name, registry, report, budget, peak_flops=peak, device=device
        )
        log(f"bench: {name} done in {time.perf_counter() - t0:.1f} s")
    if plugin_cases:
        run_plugin_cases(registry, report)
    report.sections["runs"] = {str(d): run_dir_rows(d) for d in run_dirs}
    report.sections["peak_rss_mb"] = peak_rss_mb()
    return report


def run_dir_rows(run_dir) -> list[dict]:
    path = Path(run_dir) / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a finished genneg run?")
    return rejection_rows(json.loads(path.read_text()))


def _g(value, spec=".3g", scale=1.0):
    return "-" if value is None else format(value * scale, spec)


def markdown(report: Report) -> str:
    """The printed tables: per-preset throughput, rejection, plugin cases."""
    m = report.sections["machine"]
    lines = [
        f"Measured {m['date']} on {m['processor']}, {m['cpu_count']} CPU cores "
        f"({m['torch_threads']} torch threads), torch {m['torch']}"
        + (f", {m['cuda']}" if m.get("cuda") else "")
        + f"; matmul peak {_g(m['matmul_flop_per_s'], '.1f', 1e-9)} GFLOP/s.",
        "",
    ]
    presets = report.sections.get("presets", {})
    if presets:
        lines += [
            "| preset | oracle samples/s | elements/s | vectorised / naive | baseline "
            "samples*steps/s | cost x: 1 clf | 2 clf | 4 clf | distilled | denoiser MFLOP/eval "
            "| clf MFLOP/eval | baseline % of peak | train step ms (den / clf) | peak RSS MiB |",
            "|" + "---|" * 14,
        ]
        for name, sec in presets.items():
            meas = sec.get("measured", {})
            s = sec.get("sampling", {}).get("models", {})
            fl = sec.get("sampling", {}).get("flops_per_eval", {})
            frac = s.get("baseline", {}).get("fraction_of_peak")
            cells = [
                name,
                _g(meas.get("oracle_samples_per_s"), ".4g"),
                _g(meas.get("oracle_elements_per_s"), ".4g"),
                _g(meas.get("oracle_vectorised_over_naive"), ".1f"),
                _g(s.get("baseline", {}).get("samples_steps_per_s"), ".4g"),
                *[
                    _g(s.get(k, {}).get("cost_ratio"), ".2f")
                    for k in ("stack1", "stack2", "stack4")
                ],
                _g(s.get("distill", {}).get("cost_ratio"), ".2f"),
                _g(fl.get("denoiser"), ".3g", 1e-6),
                _g(fl.get("classifier_guidance"), ".3g", 1e-6),
                _g(frac, ".2g", 100),
                f"{_g(meas.get('denoiser_train_step_s'), '.3g', 1e3)} / "
                f"{_g(meas.get('classifier_train_step_s'), '.3g', 1e3)}",
                _g(sec.get("peak_rss_mb"), ".0f"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        b = report.sections.get("budget", {})
        lines += [
            "",
            f"Sampler: one batch of {b.get('batch')} samples, at most {b.get('max_steps')} steps, "
            "untrained weights; cost x = seconds relative to the baseline in the same process. "
            "Peak RSS is the process' maximum so far (monotone over presets).",
        ]
        for name, sec in presets.items():
            rows = sec.get("rejection_untrained")
            if rows:
                lines += ["", rejection_table(rows, f"{name}: rejection (untrained weights)")]
    for run_dir, rows in report.sections.get("runs", {}).items():
        lines += ["", rejection_table(rows, f"rejection sampling vs Gen-neG: {run_dir}")]
    plugin = sorted({r["case"] for r in report.records if r["case"].startswith("plugin:")})
    if plugin:
        lines += ["", "**plugin benchmark cases**", "", report.records_table(plugin)]
    if report.errors:
        lines += ["", "**errors**", ""]
        lines += [f"- {e['case']}: {e['error']}" for e in report.errors]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genneg.bench",
        description="Benchmark installed genneg plugins; or, with only --run-dir, print the "
        "Gen-neG against rejection sampling table of finished runs.",
    )
    parser.add_argument("--out", default="bench-results", help="folder for bench.json/bench.md")
    parser.add_argument(
        "--presets",
        default=None,
        help="comma-separated presets (default: the small preset of each installed plugin)",
    )
    parser.add_argument("--run-dir", action="append", default=[], help="finished run (repeat)")
    parser.add_argument("--device", default=None, help="e.g. cuda (default: the preset's)")
    parser.add_argument("--batch", type=int, default=Budget.batch)
    parser.add_argument("--max-steps", type=int, default=Budget.max_steps)
    args = parser.parse_args(argv)
    if args.run_dir and args.presets is None:
        for run_dir in args.run_dir:
            try:
                rows = run_dir_rows(run_dir)
            except (FileNotFoundError, KeyError, ValueError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(rejection_table(rows, f"rejection sampling vs Gen-neG: {run_dir}"))
            print()
        return 0
    presets = None if args.presets is None else [p for p in args.presets.split(",") if p]
    budget = Budget(batch=args.batch, max_steps=args.max_steps)
    t0 = time.perf_counter()
    report = run_benchmarks(presets, budget=budget, device=args.device, run_dirs=args.run_dir)
    report.sections["total_seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(report.to_json())
    text = markdown(report)
    (out / "bench.md").write_text(text + "\n")
    print(text)
    print(
        f"\nwrote {out / 'bench.json'} and {out / 'bench.md'} "
        f"({report.sections['total_seconds']:.0f} s)"
    )
    return 1 if report.errors else 0
