"""The structure of Table 2: MDM, MDM + classifier (Eq. 13), MDM + classifier w/o IS, sharing
one baseline, with infraction %, inf. per step %, r-ELBO (± s.e.) and a picture of a
penetrating motion next to the guided model's motion from the same noise."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import torch

from genneg import config as config_mod
from genneg.components import OracleResult
from genneg.engine import build
from genneg.engine.rundir import atomic_write_text, load_checkpoint
from genneg.engine.runner import run, stage_generator
from genneg.engine.sampling import resample_conditions
from genneg.guidance import GuidedDenoiser
from genneg.plugins import get_registry

VARIANTS = (("classifier", "is"), ("classifier-no-is", "no-is"))
LABELS = {
    "baseline": "MDM",
    "classifier": "MDM + classifier",
    "classifier-no-is": "MDM + classifier w/o IS",
}


def table2_configs(base, out: Path) -> dict:
    """One-iteration runs for each weighting; the second reuses the first's baseline."""
    cfgs = {}
    for key, weighting in VARIANTS:
        cfg = attrs.evolve(
            base,
            name=f"{base.name}-{key}",
            iterations=1,
            classifier=attrs.evolve(base.classifier, weighting=weighting),
            distill=attrs.evolve(base.distill, enabled=False),
        )
        if key != VARIANTS[0][0]:
            cfg = attrs.evolve(cfg, baseline_from=base.baseline_from or str(out / VARIANTS[0][0]))
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
        "| NFE/sample | ms/sample |\n|---|---|---|---|---|---|"
    )
    lines = [head]
    for key in ("baseline", *(k for k, _ in VARIANTS)):
        r = rows.get(key)
        cost = (
            ("-", "-")
            if r is None
            else (f"{r['nfe_per_sample']:.0f}", f"{1000 * r['seconds_per_sample']:.1f}")
        )
        lines.append(
            f"| {LABELS[key]} | {_pm(r, 'infraction')} | "
            f"{_pm(r, 'element_infraction')} | {_pm(r, 'elbo', 4)} | {cost[0]} | "
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
) -> Path:
    """Run (or resume) both variants under ``out`` and write ``table2.md``, ``table2.json``
    and ``table2.png``; returns the path of ``table2.md``."""
    registry = registry or get_registry()
    base = config_mod.resolve(registry.get("presets", preset)(), (), assignments)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = table2_configs(base, out)
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
    text = f"{table}\n\nTime on this machine (seconds):\n\n{format_timings(timings)}\n"
    atomic_write_text(out / "table2.md", text)
    atomic_write_text(out / "table2.json", json.dumps({"rows": rows, "seconds": timings}, indent=1))
    if picture and rows.get("classifier") is not None:
        corrected_picture(
            cfgs["classifier"], out / VARIANTS[0][0], out / "table2.png", registry=registry
        )
    return out / "table2.md"


def _stage_seconds(rundir: Path) -> dict:
    """Seconds per stage and activity (training, synthetic sampling and labelling, evaluation
    sampling) from a run's ``metrics.jsonl``."""
    out: dict = {}
    path = rundir / "metrics.jsonl"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        rec = json.loads(line)
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
            text = ", ".join(f"{k} {v:.0f}" for k, v in acts.items())
            lines.append(f"| {run_name} | {stage} | {text} |")
    return "\n".join(lines)


@torch.no_grad()
def corrected_picture(cfg, rundir: Path, path: Path, *, registry, n: int = 64) -> bool:
    """Sample ``n`` motions from the baseline and the guided model with the same conditions
    and noise; draw one the baseline makes penetrate and the guided model keeps above the
    floor (or, failing that, any penetrating one). Returns whether a corrected pair exists."""
    from genneg_motion.plotting import motion_joints, plot_motions
    from genneg_motion.splits import denormalise

    process = build.make_process(cfg.process)
    dataset = build.make_dataset(registry, cfg.dataset)
    splits = dataset.load(
        str(Path(cfg.data_root).expanduser()), stage_generator(cfg.seed, "data", "split")
    )
    oracle = build.make_oracle(registry, cfg.oracle)
    base = build.make_denoiser(registry, cfg.denoiser, process)
    base.load_state_dict(load_checkpoint(rundir / "ckpt" / "baseline.pt")["modules"]["denoiser"])
    clf = build.make_classifier(registry, cfg.classifier.network, process)
    clf.load_state_dict(load_checkpoint(rundir / "ckpt" / "iter1.pt")["modules"]["classifier"])
    base.eval()
    clf.eval().requires_grad_(False)
    guided = GuidedDenoiser(base, [clf], cfg.classifier.guidance_scale)
    sampler = registry.get("samplers", cfg.sampling.sampler)
    sigmas = process.sampling_sigmas(cfg.sampling.steps or None)
    gen = stage_generator(cfg.seed, "table2", "picture")
    cond, shape = resample_conditions(splits.train, n, gen)
    x_init = process.sample_prior((n, *shape), gen)
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    samples = {}
    for key, model in (("baseline", base), ("guided", guided)):
        samples[key] = sampler(
            model,
            x_init.clone(),
            sigmas,
            cond=cond,
            generator=torch.Generator().manual_seed(seed),
            **cfg.sampling.options,
        )
    labels: dict[str, OracleResult] = {k: oracle.label(v, cond) for k, v in samples.items()}
    fixed = (~labels["baseline"].valid & labels["guided"].valid).nonzero().flatten()
    bad = (~labels["baseline"].valid).nonzero().flatten()
    if len(fixed):
        i = int(fixed[0])
    elif len(bad):
        i = int(bad[0])
    else:
        return False
    idx = torch.tensor([i])
    joints = [
        motion_joints(
            denormalise(samples[k][idx], {kk: v[idx] for kk, v in cond.items()}), cond["mask"][idx]
        )[0]
        for k in ("baseline", "guided")
    ]
    status = [
        "penetrates" if not labels[k].valid[i] else "above the floor"
        for k in ("baseline", "guided")
    ]
    titles = [f"MDM (baseline): {status[0]}", f"MDM + classifier: {status[1]}"]
    threshold = getattr(oracle, "threshold", 0.05)
    plot_motions(joints, titles, str(path), f"{cfg.name}: same noise, same condition", threshold)
    return bool(len(fixed))
