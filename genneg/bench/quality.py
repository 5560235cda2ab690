"""Quality at a fixed small budget: a reduced run of a preset through the engine, or the
results of a finished run directory; and Gen-neG against rejection sampling from them."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import attrs

from genneg import config as config_mod
from genneg.bench import rejection


def reduce_config(cfg, fraction: float = 0.25, iterations: int = 2, device: str = "cpu"):
    """``cfg`` with every training loop, synthetic set and evaluation scaled down by
    ``fraction`` (and at most ``iterations`` Gen-neG iterations, always distilled), on
    ``device`` (the CPU by default): the quality benchmark's fixed budget."""

    def steps(train, lo=20):
        return attrs.evolve(
            train,
            steps=max(lo, round(train.steps * fraction)),
            log_every=max(1, round(train.steps * fraction)),
        )

    synth = cfg.synth
    n = max(synth.min_per_class * 2, round(synth.n_per_class * fraction))
    return attrs.evolve(
        cfg,
        name=f"{cfg.name}-bench",
        device=device,
        baseline_from="",
        baseline=steps(cfg.baseline),
        iterations=min(cfg.iterations, iterations) or 1,
        synth=attrs.evolve(
            synth,
            n_per_class=n,
            max_samples=max(4 * n, round(synth.max_samples * fraction)),
            keep_positive=round(synth.keep_positive * fraction),
        ),
        classifier=attrs.evolve(cfg.classifier, train=steps(cfg.classifier.train)),
        distill=attrs.evolve(
            cfg.distill,
            enabled=True,  # the distilled model is one of the compared ones
            train=attrs.evolve(
                steps(cfg.distill.train),
                batch_size=min(cfg.distill.train.batch_size, cfg.baseline.batch_size),
            ),
        ),
        eval=attrs.evolve(
            cfg.eval,
            n_samples=min(cfg.eval.n_samples, 4000),
            elbo_points=min(cfg.eval.elbo_points, 500),
            elbo_k=min(cfg.eval.elbo_k, 8),
            plot_samples=min(cfg.eval.plot_samples, 500),
        ),
    )


def run_reduced(preset: str, cfg, registry, out_dir=None, **reduce) -> Path:
    """Run the reduced ``cfg`` with the engine; returns the run directory."""
    from genneg.engine.runner import run

    small = reduce_config(cfg, **reduce)
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"genneg-bench-{preset}-"))
    run(small, out, registry=registry, progress=False, quiet=True)
    return out


def read_run(run_dir) -> dict:
    """Rows and config of a finished run directory."""
    path = Path(run_dir)
    results = path / "results.json"
    if not results.exists():
        raise FileNotFoundError(f"{path} has no results.json (is the run finished?)")
    cfg = config_mod.from_dict(config_mod.load_toml(path / "config.toml"))
    state = path / "state.json"
    stopped = json.loads(state.read_text()).get("stopped") if state.exists() else None
    rows = json.loads(results.read_text())["rows"]
    return {"config": cfg, "rows": rows, "run_dir": str(path), "stopped": stopped}


def quality(preset: str, report, *, registry=None, run_dir=None, cfg=None, **reduce) -> dict:
    """Record infraction % +- s.e. and ELBO per stage, from ``run_dir`` or a reduced run."""
    t0 = time.perf_counter()
    if run_dir is None:
        run_dir = run_reduced(preset, cfg, registry, **reduce)
        source = "reduced run"
    else:
        source = "run directory"
    info = read_run(run_dir)
    seconds = time.perf_counter() - t0
    for row in info["rows"]:
        report.add(
            "quality",
            preset=preset,
            source=source,
            run_dir=str(run_dir),
            stage=row["stage"],
            classifiers=row.get("n_classifiers", 0),
            infraction=row["infraction"],
            infraction_se=row["infraction_se"],
            n=row["n"],
            elbo=row["elbo"],
            elbo_se=row["elbo_se"],
            elbo_kind=row.get("elbo_kind", "elbo"),
            nfe_per_sample=row.get("nfe_per_sample"),
            seconds_per_sample=row.get("seconds_per_sample"),
        )
    report.add(
        "quality-run",
        preset=preset,
        source=source,
        device=info["config"].device,
        seconds=seconds,
        run_dir=str(run_dir),
        stopped=info["stopped"],
    )
    return info


def versus_rejection(preset: str, report, rows: list[dict], deltas=rejection.DELTAS) -> list:
    """Cost per oracle-valid sample and parallel draws for 1 - delta, for each stage of a run
    (baseline with rejection; stacked and distilled models with rejection of what remains).
    FLOPs and oracle cost come from this preset's component benchmark where measured."""
    oracle = report.find("oracle", preset=preset)
    oracle_s = oracle[0]["seconds_per_sample"] if oracle else 0.0
    flops = {
        r["classifiers"]: r["flops_per_eval"]
        for r in report.find("sampler", preset=preset)
        if r["model"] != "distilled" and r.get("batched", True)
    }
    stages = []
    for row in rows:
        k = row.get("n_classifiers", 0) if row["stage"] != "distill" else 0
        nfe = row.get("nfe_per_sample")
        per_eval = flops.get(k)
        if per_eval is None and 0 in flops and 1 in flops:  # the stack's cost is linear in k
            per_eval = flops[0] + k * (flops[1] - flops[0])
        stages.append(
            {
                "model": row["stage"],
                "infraction": row["infraction"],
                "nfe_per_sample": nfe,
                "seconds_per_sample": row.get("seconds_per_sample"),
                "oracle_seconds_per_sample": oracle_s,
                "flops_per_sample": per_eval * nfe if per_eval is not None and nfe else None,
            }
        )
    out = rejection.compare(stages, deltas)
    for rec, row in zip(out, rows):
        report.add(
            "rejection",
            preset=preset,
            stage=row["stage"],
            classifiers=row.get("n_classifiers", 0),
            **rec,
        )
    return out
