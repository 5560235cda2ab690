"""The structure of Table 2: MDM, MDM + classifier (Eq. 13), MDM + classifier w/o IS, sharing
one baseline, with infraction %, inf. per step %, r-ELBO (± s.e.), a paired comparison of where
each model puts the body relative to the floor, and a picture of a penetrating motion next to
the guided model's motion from the same noise."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import torch

from genneg import (
    Experiment,
    RunDir,
    atomic_write_text,
    get_registry,
    resolve_config,
    run,
    stage_generator,
)

#: Table 2's rows after the baseline: (run name, loss weighting, classifier granularity).
VARIANTS = (("classifier", "is", "sample"), ("classifier-no-is", "no-is", "sample"))
#: An optional extra row: a per-frame classifier trained on the oracle's frame labels.
PER_FRAME = ("classifier-per-frame", "is", "element")
LABELS = {
    "baseline": "MDM",
    "classifier": "MDM + classifier",
    "classifier-no-is": "MDM + classifier w/o IS",
    "classifier-per-frame": "MDM + per-frame classifier",
}


def table2_configs(base, out: Path, per_frame: bool = False) -> dict:
    """One-iteration runs for each variant; all but the first reuse the first's baseline."""
    cfgs = {}
    first = VARIANTS[0][0]
    for key, weighting, granularity in VARIANTS + ((PER_FRAME,) if per_frame else ()):
        network = base.classifier.network
        if granularity != "sample":
            network = attrs.evolve(network, options={**network.options, "granularity": granularity})
        cfg = attrs.evolve(
            base,
            name=f"{base.name}-{key}",
            iterations=1,
            classifier=attrs.evolve(base.classifier, weighting=weighting, network=network),
            distill=attrs.evolve(base.distill, enabled=False),
        )
        if key != first:
            cfg = attrs.evolve(cfg, baseline_from=base.baseline_from or str(out / first))
        cfgs[key] = cfg
    return cfgs


def _pm(row, key, digits=2, scale=1.0):
    if row is None or key not in row:
        return "-"
    return f"{scale * row[key]:.{digits}f} ± {scale * row[key + '_se']:.{digits}f}"


def format_table(rows: dict) -> str:
    """Markdown in Table 2's columns (r-ELBO in nats per dimension). Every stage estimates the
    r-ELBO on the same points with the same noise (common random numbers), so the difference
    to the baseline (Δ) is far more precise than the ± s.e. of each value."""
    head = (
        "| Method | Infraction (%) ↓ | Inf. per step (%) ↓ | r-ELBO (nats/dim) ↑ "
        "| Δ r-ELBO | NFE/sample | ms/sample |\n|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for key in ("baseline", *(k for k in LABELS if k != "baseline" and k in rows)):
        r = rows.get(key)
        cost = (
            ("-", "-")
            if r is None
            else (f"{r['nfe_per_sample']:.0f}", f"{1000 * r['seconds_per_sample']:.1f}")
        )
        base = rows.get("baseline")
        delta = "-" if r is None or base is None else f"{r['elbo'] - base['elbo']:+.4f}"
        lines.append(
            f"| {LABELS[key]} | {_pm(r, 'infraction')} | "
            f"{_pm(r, 'element_infraction')} | {_pm(r, 'elbo', 4)} | {delta} | {cost[0]} | "
            f"{cost[1]} |"
        )
    return "\n".join(lines)


def run_table2(
    preset: str,
    out: str,
    assignments=(),
    *,
    progress: bool = False,
    registry=None,
    picture: bool = True,
    per_frame: bool = False,
) -> Path:
    """Run (or resume) both variants under ``out`` and write ``table2.md``, ``table2.json``
    and ``table2.png``; returns the path of ``table2.md``."""
    registry = registry or get_registry()
    base = resolve_config(preset, (), assignments, registry=registry)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = table2_configs(base, out, per_frame)
    rows, timings = {}, {}
    for key, cfg in cfgs.items():
        rundir = out / key
        result = run(
            cfg,
            rundir,
            resume=(rundir / "config.toml").exists(),
            registry=registry,
            progress=progress,
            quiet=not progress,
        )
        by_stage = {r["stage"]: r for r in result}
        if key == VARIANTS[0][0]:
            rows["baseline"] = by_stage.get("baseline")
        rows[key] = by_stage.get("iter1")
        timings[key] = _stage_seconds(rundir)
    table = format_table(rows)
    floor = {}
    if picture and rows.get("baseline") is not None:
        floor = paired_comparison(cfgs, out, registry=registry, picture=out / "table2.png")
    text = f"{table}\n"
    if floor:
        text += (
            "\nSame conditions and noise for every model (where the body is, relative to "
            f"the floor):\n\n{format_floor(floor)}\n"
        )
    text += f"\nTime on this machine (seconds):\n\n{format_timings(timings)}\n"
    atomic_write_text(out / "table2.md", text)
    atomic_write_text(
        out / "table2.json",
        json.dumps({"rows": rows, "paired": floor, "seconds": timings}, indent=1),
    )
    return out / "table2.md"


def _stage_seconds(rundir: Path) -> dict:
    """Seconds per stage and activity (training, synthetic sampling and labelling, evaluation
    sampling) from a run's ``metrics.jsonl``."""
    out: dict = {}
    if not (rundir / "metrics.jsonl").exists():
        return out
    for rec in RunDir(rundir, quiet=True, write=False).read_metrics():
        stage, event = rec.get("stage"), rec.get("event")
        if event == "eval":
            seconds = rec["seconds_per_sample"] * rec["n"]
            event = "eval sampling"
        else:
            seconds = rec.get("seconds")
        if stage is not None and seconds is not None:
            out.setdefault(stage, {})[event] = round(seconds, 1)
    return out


def format_timings(timings: dict) -> str:
    """One line per run and stage: seconds of each activity."""
    lines = ["| run | stage | seconds |", "|---|---|---|"]
    for run_name, stages in timings.items():
        for stage, acts in stages.items():
            text = ", ".join(f"{k} {v:.1f}" for k, v in acts.items())
            lines.append(f"| {run_name} | {stage} | {text} |")
    return "\n".join(lines)


def _load_models(cfgs: dict, out: Path, registry):
    """The experiment of the first variant's run (the shared baseline) and each finished
    variant's model: the baseline, and the baseline guided by that variant's classifier."""
    first = Experiment.from_run_dir(out / VARIANTS[0][0], registry=registry)
    models = {"baseline": first.load_stage("baseline")}
    for key in cfgs:
        if (out / key / "ckpt" / "iter1.pt").exists():
            variant = Experiment.from_run_dir(out / key, registry=registry)
            variant.base = first.base  # baseline_from: the same weights
            models[key] = variant.guided([variant.load_classifier(1)])
    return first, models


def lowest_joint(x: torch.Tensor, cond: dict) -> torch.Tensor:
    """Per-frame height of the lowest joint (metres), ``NaN`` on padded frames."""
    from genneg_motion.features import joint_heights
    from genneg_motion.splits import denormalise

    low = joint_heights(denormalise(x, cond)).amin(-1)
    return torch.where(cond["mask"], low, torch.full_like(low, float("nan")))


@torch.no_grad()
def paired_comparison(
    cfgs: dict, out: Path, *, registry, n: int = 256, picture: Path | None = None
) -> dict:
    """Sample ``n`` motions from the baseline and each guided model with the same conditions
    and the same noise, and measure how each model places the body relative to the floor: the
    mean height of the lowest joint over frames (cm; guidance that lifts the whole body, or
    "floats", shows here) next to the same on held-out data. Optionally draw one motion the
    baseline makes penetrate next to the guided model's motion from the same noise."""
    exp, models = _load_models(cfgs, out, registry)
    gen = stage_generator(exp.cfg.seed, "table2", "paired")
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    samples, labels, stats = {}, {}, {}
    cond = None
    for key, model in models.items():
        # the same generator state for every model: same conditions, same initial noise, same
        # sampler noise
        drawn = exp.sample(model, n, torch.Generator().manual_seed(seed))
        samples[key], cond = drawn.x, drawn.cond
        labels[key] = exp.label(drawn).valid
        low = lowest_joint(samples[key], cond)
        stats[key] = {
            "n": n,
            "infraction": 100 * float((~labels[key]).float().mean()),
            "lowest_joint_cm": 100 * float(low.nanmean()),
        }
    test = exp.splits.test
    stats["data"] = {
        "n": len(test),
        "lowest_joint_cm": 100 * float(lowest_joint(test.x, test.cond).nanmean()),
    }
    if picture is not None and "classifier" in samples:
        _draw_pair(samples, labels, cond, exp.oracle, picture, exp.cfg.name)
    return stats


def _draw_pair(samples, labels, cond, oracle, path, name) -> bool:
    from genneg_motion.plotting import motion_joints, plot_motions
    from genneg_motion.splits import denormalise

    fixed = (~labels["baseline"] & labels["classifier"]).nonzero().flatten()
    bad = (~labels["baseline"]).nonzero().flatten()
    if len(fixed) == 0 and len(bad) == 0:
        return False
    i = int(fixed[0]) if len(fixed) else int(bad[0])
    idx = torch.tensor([i])
    sub = {k: v[idx] for k, v in cond.items()}
    keys = ("baseline", "classifier")
    joints = [motion_joints(denormalise(samples[k][idx], sub), sub["mask"])[0] for k in keys]
    status = ["penetrates" if not labels[k][i] else "above the floor" for k in keys]
    titles = [f"MDM (baseline): {status[0]}", f"MDM + classifier: {status[1]}"]
    plot_motions(
        joints,
        titles,
        str(path),
        f"{name}: same noise, same condition",
        getattr(oracle, "threshold", 0.01),
    )
    return bool(len(fixed))


def format_floor(stats: dict) -> str:
    lines = [
        "| samples of | n | infraction (%) | lowest joint, mean over frames (cm) |",
        "|---|---|---|---|",
    ]
    for key, st in stats.items():
        label = "held-out data" if key == "data" else LABELS[key]
        inf = f"{st['infraction']:.1f}" if "infraction" in st else "-"
        lines.append(f"| {label} | {st['n']} | {inf} | {st['lowest_joint_cm']:.2f} |")
    return "\n".join(lines)
