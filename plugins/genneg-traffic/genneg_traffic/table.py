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
distillation of (dag)  agent / distill
distillation of (*)    agent-stacked / distill
=====================  ==========================
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import numpy as np
import torch

from genneg import config as config_mod
from genneg.plugins import get_registry
from genneg_traffic.presets import VARIANTS

ROWS = [
    ("baseline DM", "baseline", "baseline"),
    ("by-scene w/o IS", "scene-no-is", "iter1"),
    ("by-scene", "scene", "iter1"),
    ("by-agent w/o IS", "agent-no-is", "iter1"),
    ("by-agent †", "agent", "iter1"),
    ("by-agent stacked *", "agent-stacked", "iter2"),
    ("distillation of †", "agent", "distill"),
    ("distillation of *", "agent-stacked", "distill"),
]


def _cfg(preset: str, assignments) -> config_mod.RunConfig:
    base = get_registry().get("presets", preset)()
    return config_mod.resolve(base, (), assignments)


def _eval_rows(run_dir: Path) -> dict:
    rows = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") == "eval":
                rows[rec["stage"]] = rec
    return rows


def _pm(value, se, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f} ± {se:.{digits}f}"


def format_table(out: Path) -> str:
    """The Table 1 markdown from the runs under ``out``."""
    lines = [
        "| method | collision (%) | offroad (%) | infraction (%) | r-ELBO (nats/dim) |",
        "|---|---|---|---|---|",
    ]
    for label, run, stage in ROWS:
        rec = _eval_rows(out / run).get(stage)
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
) -> str:
    """Run the baseline and the Table 1 variants of ``preset`` (skipping finished runs) and
    write ``table.md``, ``fig1.png`` and ``heatmap.png`` under ``out``."""
    from genneg.engine.runner import run

    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    base_cfg = _cfg(preset, assignments)
    base_cfg = attrs.evolve(
        base_cfg,
        name=f"{base_cfg.name}-baseline",
        iterations=0,
        distill=attrs.evolve(base_cfg.distill, enabled=False),
    )
    _run_once(run, base_cfg, out_p / "baseline", resume, progress, log)
    for suffix in rows or list(VARIANTS):
        if suffix not in VARIANTS:
            raise ValueError(f"unknown Table 1 row {suffix!r}; choose from {list(VARIANTS)}")
        cfg = attrs.evolve(
            _cfg(f"{preset}-{suffix}", assignments), baseline_from=str(out_p / "baseline")
        )
        _run_once(run, cfg, out_p / suffix, resume, progress, log)
    text = format_table(out_p)
    (out_p / "table.md").write_text(text + "\n")
    if figures:
        final = next(((r, s) for _, r, s in reversed(ROWS) if s in _eval_rows(out_p / r)), None)
        if final is not None and final[0] != "baseline":
            before_after_figures(out_p, final[0], final[1], log=log)
    return text


def _run_once(run, cfg, path: Path, resume, progress, log):
    done = path / "state.json"
    if done.exists() and not resume:
        log(f"{path}: exists, reusing its finished stages (pass --resume to continue it)")
        return
    log(f"== {cfg.name} -> {path}")
    run(cfg, str(path), resume=resume or path.exists(), progress=progress, quiet=not progress)


def _stage_model(run_dir: Path, stage: str):
    """The Experiment of a finished run and its model at ``stage`` (baseline, iterK, distill)."""
    from genneg.engine import build
    from genneg.engine.rundir import RunDir, load_checkpoint
    from genneg.engine.runner import Experiment

    cfg = config_mod.from_dict(config_mod.load_toml(run_dir / "config.toml"))
    exp = Experiment(cfg, get_registry(), RunDir(run_dir, quiet=True), progress=False)
    base_ckpt = run_dir / "ckpt" / "baseline.pt"
    exp.base.load_state_dict(load_checkpoint(base_ckpt)["modules"]["denoiser"])
    exp.base.eval().requires_grad_(False)
    if stage == "baseline":
        return exp, exp.base
    if stage == "distill":
        student = build.make_denoiser(exp.registry, cfg.denoiser, exp.process)
        student.load_state_dict(
            load_checkpoint(run_dir / "ckpt" / "distill.pt")["modules"]["denoiser"]
        )
        return exp, student.eval().requires_grad_(False)
    clfs = []
    for i in range(1, int(stage[4:]) + 1):
        clf = exp.new_classifier()
        clf.load_state_dict(
            load_checkpoint(run_dir / "ckpt" / f"iter{i}.pt")["modules"]["classifier"]
        )
        clfs.append(clf.eval().requires_grad_(False))
    return exp, exp.guided(clfs)


def before_after_figures(out: Path, run: str, stage: str, n: int | None = None, log=print):
    """``fig1.png`` (the same conditions sampled by the baseline and by ``run``/``stage``,
    infracting vehicles in red) and ``heatmap.png`` (infracting vehicles per unit area)."""
    from genneg.engine.synth import label_batch
    from genneg_traffic.plots import infraction_heatmap, plot_scenes

    panels = []
    for label, run_dir, st in (
        ("baseline", out / "baseline", "baseline"),
        (f"{run} / {stage}", out / run, stage),
    ):
        exp, model = _stage_model(run_dir, st)
        k = n or exp.cfg.eval.n_samples
        gen = torch.Generator().manual_seed(1234)  # same conditions for both models
        samples = exp.sampler.sample(model, k, gen)
        finite, part, result = label_batch(exp.oracle, exp.cfg.oracle.name, samples)
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
