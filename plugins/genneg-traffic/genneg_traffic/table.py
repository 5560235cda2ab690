"""Table 1 in one command: variants sharing one baseline, their metrics, a Fig. 1-style picture
and infraction heat maps before and after Gen-neG.

Runs (under ``out/``): ``baseline`` (the preset with no Gen-neG iteration), then every row of
:data:`genneg_traffic.presets.VARIANTS` with ``baseline_from`` pointing at it. The table reads
each run's ``metrics.jsonl`` rows:

=====================  ==========================
Table 1 row            run / stage
=====================  ==========================
baseline DM            baseline / baseline
by-scene w/o IS        scene-no-is / iter1
by-scene               scene / iter1
by-agent w/o IS        agent-no-is / iter1
by-agent (dagger)      agent / iter1
by-agent stacked (*)   agent-stacked / iter2
by-agent joint         agent-joint / iter1
distillation of (dag)  agent / distill
distillation of (*)    agent-stacked / distill
=====================  ==========================
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import attrs
import numpy as np
import torch

from genneg import Experiment, RunDir, resolve_config, run, threads
from genneg_traffic.presets import VARIANTS

ROWS = [
    ("baseline DM", "baseline", "baseline"),
    ("by-scene w/o IS", "scene-no-is", "iter1"),
    ("by-scene", "scene", "iter1"),
    ("by-agent w/o IS", "agent-no-is", "iter1"),
    ("by-agent †", "agent", "iter1"),
    ("by-agent stacked *", "agent-stacked", "iter2"),
    ("by-agent joint (Thm 1)", "agent-joint", "iter1"),
    ("distillation of †", "agent", "distill"),
    ("distillation of *", "agent-stacked", "distill"),
]


def _eval_rows(run_dir: Path) -> dict:
    """The evaluation rows of a run's finished stages (none if the run did not start)."""
    if not (run_dir / "state.json").exists():
        return {}
    return RunDir(run_dir, quiet=True, write=False).read_evals()


def _pm(value, se, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f} ± {se:.{digits}f}"


def format_table(out: Path) -> str:
    """The Table 1 markdown from the runs under ``out``."""
    lines = [
        "| method | collision (%) | offroad (%) | infraction (%) | r-ELBO (nats/dim) |",
        "|---|---|---|---|---|",
    ]
    for label, run_name, stage in ROWS:
        rec = _eval_rows(out / run_name).get(stage)
        if rec is None:
            continue
        cats = rec.get("categories", {})
        col, off = cats.get("collision", {}), cats.get("offroad", {})
        lines.append(
            f"| {label} | {_pm(col.get('rate'), col.get('se', 0))} | "
            f"{_pm(off.get('rate'), off.get('se', 0))} | "
            f"{_pm(rec['infraction'], rec['infraction_se'])} | "
            f"{_pm(rec['elbo'], rec['elbo_se'], 3)} |"
        )
    return "\n".join(lines)


def run_table(
    preset: str,
    out: str,
    *,
    assignments=(),
    resume=False,
    rows=None,
    progress=True,
    log=print,
    figures=True,
    jobs=1,
) -> str:
    """Run the baseline and the Table 1 variants of ``preset`` (skipping finished runs) and
    write ``table.md``, ``fig1.png`` and ``heatmap.png`` under ``out``.

    ``jobs > 1``: after the baseline, the rows run in that many worker processes at once, the
    longest first (:data:`ROW_ORDER`), each with genneg's thread governor
    (:mod:`genneg.threads`), so on 2 cores two rows run side by side on a thread each rather
    than one row on two (small-batch work gains little from a second thread); ``0``: one job
    per CPU core (one on a CUDA device). Every row is the same run either way (its own
    generators; float rounding may differ with the thread count)."""
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    base_cfg = resolve_config(preset, (), assignments)
    base_cfg = attrs.evolve(
        base_cfg,
        name=f"{base_cfg.name}-baseline",
        iterations=0,
        distill=attrs.evolve(base_cfg.distill, enabled=False),
    )
    rows = list(rows or VARIANTS)
    for suffix in rows:
        if suffix not in VARIANTS:
            raise ValueError(f"unknown Table 1 row {suffix!r}; choose from {list(VARIANTS)}")
    _run_once(base_cfg, out_p / "baseline", resume, progress, log)
    configs = {
        suffix: attrs.evolve(
            resolve_config(f"{preset}-{suffix}", (), assignments),
            baseline_from=str(out_p / "baseline"),
        )
        for suffix in sorted(rows, key=_row_rank)
    }
    if jobs == 0:
        jobs = 1 if base_cfg.device.startswith("cuda") else os.cpu_count() or 1
    if jobs <= 1 or len(configs) <= 1:
        for suffix, cfg in configs.items():
            _run_once(cfg, out_p / suffix, resume, progress, log)
    else:
        _run_parallel(configs, out_p, resume, jobs, log)
    text = format_table(out_p)
    (out_p / "table.md").write_text(text + "\n")
    if figures:
        final = next(((r, s) for _, r, s in reversed(ROWS) if s in _eval_rows(out_p / r)), None)
        if final is not None and final[0] != "baseline":
            before_after_figures(out_p, final[0], final[1], log=log)
    return text


#: Rows by decreasing run time on the CPU sizes (the stacked row samples twice, once guided;
#: rows with distillation train a student), so that parallel jobs finish close together.
ROW_ORDER = ["agent-stacked", "agent", "scene", "scene-no-is", "agent-joint", "agent-no-is"]


def _row_rank(suffix: str) -> int:
    return ROW_ORDER.index(suffix) if suffix in ROW_ORDER else len(ROW_ORDER)


def _run_parallel(configs: dict, out: Path, resume, jobs: int, log) -> None:
    """The rows in ``jobs`` worker processes (spawned: no torch state is shared), logging
    each start and end; the first failure is raised once every submitted row has ended (the
    others run on: each is its own run directory)."""
    context = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(jobs, len(configs)), mp_context=context) as pool:
        futures = {}
        for suffix, cfg in configs.items():
            log(f"== {cfg.name} -> {out / suffix} (worker process)")
            futures[pool.submit(_run_in_worker, cfg, out / suffix, resume)] = suffix
        for future in as_completed(futures):
            future.result()
            minutes = (time.perf_counter() - t0) / 60
            log(f"{futures[future]}: done ({minutes:.1f} min after the rows started)")


def _run_in_worker(cfg, path: Path, resume) -> None:
    """One row in a worker process: with genneg's thread governor first, as every ``genneg``
    command has (a spawned worker starts with torch's default of one thread per core, and two
    such workers on 2 cores ran each row about 2.5 x slower, their parallel regions waiting on
    each other's threads: docs/traffic.md)."""
    threads.configure(None)
    _run_once(cfg, path, resume, False, None)


def _run_once(cfg, path: Path, resume, progress, log):
    done = path / "state.json"
    if done.exists() and not resume:
        if log is not None:
            log(f"{path}: exists, reusing its finished stages (pass --resume to continue it)")
        return
    if log is not None:
        log(f"== {cfg.name} -> {path}")
    run(cfg, str(path), resume=resume or path.exists(), progress=progress, quiet=not progress)


def before_after_figures(out: Path, run: str, stage: str, n: int | None = None, log=print):
    """``fig1.png`` (the same conditions sampled by the baseline and by ``run``/``stage``,
    infracting vehicles in red) and ``heatmap.png`` (infracting vehicles per unit area)."""
    from genneg_traffic.plots import infraction_heatmap, plot_scenes

    panels = []
    for label, run_dir, st in (
        ("baseline", out / "baseline", "baseline"),
        (f"{run} / {stage}", out / run, stage),
    ):
        exp = Experiment.from_run_dir(run_dir)
        model = exp.load_stage(st)
        k = n or exp.cfg.eval.n_samples
        gen = torch.Generator().manual_seed(1234)  # same conditions for both models
        labelled = exp.label(exp.sample(model, k, gen))
        part, result = labelled.samples, labelled.result
        ds = exp.dataset
        plot_scenes(
            part,
            result,
            ds.maps,
            ds.normalizer,
            out / f"fig1_{'before' if st == 'baseline' else 'after'}.png",
            f"{label}: infraction {100 * (1 - result.valid.float().mean()):.1f} %",
            n=8,
        )
        x = ds.normalizer.denormalize(part.x.double().numpy())
        bad = (~result.element_valid.numpy()) & part.cond["mask"].numpy()
        panels.append((label, x[bad][:, :2], len(part)))
    infraction_heatmap(panels, out / "heatmap.png")
    log(f"wrote {out / 'fig1_before.png'}, {out / 'fig1_after.png'}, {out / 'heatmap.png'}")
    return np.array([len(p[1]) for p in panels])
