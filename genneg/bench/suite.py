"""The benchmark suite: every installed small preset family, plugin cases, quality and the
comparison with rejection sampling, in one process."""

from __future__ import annotations

import time

import torch

from genneg.bench import busy, domain, gpu, quality, roofline
from genneg.bench.report import Report
from genneg.bench.timing import matmul_flops
from genneg.threads import configure as configure_threads


def preset_families(registry, only=None) -> dict[str, str]:
    """One small preset per plugin (plugin -> preset): the preset named after the plugin, else
    its shortest name; paper-size presets (named ``*paper*`` or not on the CPU) are skipped."""
    by_plugin: dict[str, list[str]] = {}
    for name, entry in registry.entries["presets"].items():
        by_plugin.setdefault(entry.plugin, []).append(name)
    out = {}
    for plugin, names in sorted(by_plugin.items()):
        small = []
        for name in names:
            if only is not None and name not in only:
                continue
            if only is None and "paper" in name:
                continue
            try:
                cfg = registry.get("presets", name)()
            except Exception:
                continue
            if only is None and cfg.device != "cpu":
                continue
            small.append(name)
        if small:
            out[plugin] = plugin if plugin in small else min(small, key=lambda n: (len(n), n))
    return out


def run_suite(
    *,
    registry=None,
    presets=None,
    quality_presets=None,
    run_dirs=(),
    sizes: domain.DomainSizes | None = None,
    reduce: dict | None = None,
    device: str = "cpu",
    threads: int | None = 1,
    threading_steps: int = 0,
    gpu_batch: int = 65536,
    roofline_preset: str | None = "checkerboard",
    log=print,
) -> Report:
    """Run every benchmark; returns the :class:`Report`.

    :param presets: preset names to benchmark (default: one small preset per plugin).
    :param quality_presets: presets whose quality is measured by a reduced engine run
        (default: all benchmarked ones without a run directory); ``()`` for none.
    :param run_dirs: finished run directories whose results give the quality (and the
        infraction rates of the rejection comparison) of their domain instead.
    :param threading_steps: training steps of the threading case (:mod:`genneg.bench.busy`,
        fresh processes alone and beside a busy one); ``0`` skips it.
    :param gpu_batch: on a CUDA ``device``, the batch of the GPU sampler case
        (:mod:`genneg.bench.gpu`: fp32, TF32 and bf16, the trained models of each domain's
        quality run where there is one); ``0`` skips it.
    """
    from genneg.plugins import get_registry

    registry = registry or get_registry()
    if threads:
        configure_threads(threads)  # a fixed count: no governor changes it mid-measurement
    report = Report()
    report.meta["device"] = device
    t_start = time.perf_counter()
    peak = matmul_flops(device)
    report.meta["matmul_flops"] = peak
    log(f"matmul: {peak / 1e9:.1f} GFLOP/s on {device} ({torch.get_num_threads()} threads)")

    families = preset_families(registry, only=presets)
    report.meta["presets"] = families
    for plugin, preset in families.items():
        report.plugin = plugin
        t0 = time.perf_counter()
        cfg = registry.get("presets", preset)()
        try:
            domain.bench_domain(
                preset, cfg, registry, report, sizes=sizes, device=device, peak_flops=peak
            )
        except Exception as exc:
            report.error(f"{preset}/components", exc)
        log(f"{preset}: components in {time.perf_counter() - t0:.1f} s")

    if threading_steps and device == "cpu":
        report.plugin = "genneg"
        t0 = time.perf_counter()
        try:
            busy.bench_threads(report, steps=threading_steps, log=log)
        except Exception as exc:
            report.error("threads", exc)
        log(f"threads: {time.perf_counter() - t0:.1f} s")

    for name, entry in sorted(registry.entries["benchmarks"].items()):
        report.plugin = entry.plugin
        t0 = time.perf_counter()
        try:
            entry.obj(report)
        except Exception as exc:
            report.error(name, exc)
        report.add("plugin-case", benchmark=name, seconds=time.perf_counter() - t0)
        log(f"benchmark case {name} [{entry.plugin}] in {time.perf_counter() - t0:.1f} s")

    if roofline_preset and roofline_preset in registry.entries["presets"]:
        entry = registry.entries["presets"][roofline_preset]
        report.plugin = entry.plugin
        t0 = time.perf_counter()
        try:
            cfg = registry.get("presets", roofline_preset)()
            roofline.bench_roofline(roofline_preset, cfg, registry, report, device=device)
        except Exception as exc:
            report.error(f"{roofline_preset}/roofline", exc)
        log(f"{roofline_preset}: roofline in {time.perf_counter() - t0:.1f} s")

    # Quality and rejection: from run directories where given, else reduced runs.
    trained = {}  # plugin -> the run directory its quality came from
    given = {}  # plugin -> run directory of the family whose preset has the run's oracle
    for run_dir in run_dirs:
        oracle = quality.read_run(run_dir)["config"].oracle.name
        matched = [
            p
            for p, preset in families.items()
            if registry.get("presets", preset)().oracle.name == oracle
        ]
        for plugin in matched:
            given[plugin] = run_dir
        if not matched:
            report.error(str(run_dir), ValueError(f"no benchmarked preset uses oracle {oracle!r}"))
    for plugin, preset in families.items():
        report.plugin = plugin
        if plugin not in given and quality_presets is not None and preset not in quality_presets:
            continue
        t0 = time.perf_counter()
        try:
            info = quality.quality(
                preset,
                report,
                registry=registry,
                run_dir=given.get(plugin),
                cfg=registry.get("presets", preset)(),
                **{"device": device, **(reduce or {})},
            )
            trained[plugin] = info["run_dir"]
            quality.versus_rejection(preset, report, info["rows"])
        except Exception as exc:
            report.error(f"{preset}/quality", exc)
        log(f"{preset}: quality in {time.perf_counter() - t0:.1f} s")
    if gpu_batch and torch.device(device).type == "cuda":
        for plugin, preset in families.items():
            report.plugin = plugin
            t0 = time.perf_counter()
            try:
                if plugin in trained:
                    gpu.bench_run_dir(
                        trained[plugin], report, registry=registry, device=device, batch=gpu_batch
                    )
                else:
                    cfg = registry.get("presets", preset)()
                    gpu.bench_preset(preset, cfg, registry, report, device=device, batch=gpu_batch)
            except Exception as exc:
                report.error(f"{preset}/gpu", exc)
            log(f"{preset}: GPU sampler in {time.perf_counter() - t0:.1f} s")
    report.meta["seconds"] = time.perf_counter() - t_start
    return report
