"""Algorithm 1 of the paper, with evaluation of every stage, checkpoints and resume.

Stages: ``baseline`` (train or reuse the DM), ``iter1 .. iterK`` (synthetic labelled set,
classifier with Eq. 13, stacked by Eq. 9), ``distill`` (Eq. 14). Each finished stage is
checkpointed and recorded in ``state.json``; ``resume=True`` reloads finished stages and
continues with the first unfinished one, with the same random streams as an uninterrupted
run (each stage seeds its own generators from the run seed and the stage name).

Under ``torchrun`` (see :mod:`genneg.distributed` and docs/distributed.md) every rank runs
this same code: sampling, labelling and evaluation are sharded across ranks, training steps
use gradients all-reduced over the ranks' shares of each batch, and only rank 0 writes files,
logs and shows progress bars.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch

from genneg import config as config_mod
from genneg import diagnostics, distributed
from genneg.components import Splits
from genneg.diffusion.loss import DenoisingLoss, real_dims
from genneg.engine import build
from genneg.engine.classifier import train_classifier
from genneg.engine.evaluate import elbo_metrics, gather_labelled, infraction_metrics
from genneg.engine.labelling import OracleLabeller
from genneg.engine.report import results_table
from genneg.engine.rundir import (
    CheckpointError,
    RunDir,
    atomic_path,
    atomic_write_text,
    load_checkpoint,
)
from genneg.engine.sampling import CountingDenoiser, ModelSampler
from genneg.engine.synth import NoNegativesError, draw_labelled
from genneg.engine.train import denoising_loss, fit, minibatch
from genneg.guidance import GuidedDenoiser
from genneg.plots import scatter_2d, stage_curves
from genneg.plugins import get_registry
from genneg.window import windowed


class RunError(RuntimeError):
    """A run that cannot start or continue (existing directory, mismatching config...)."""


class DataError(RunError, ValueError):
    """A dataset the run cannot use (NaN/inf, too few points, a shape the models reject)."""


def stage_generator(seed: int, stage: str, purpose: str) -> torch.Generator:
    """A generator for one purpose of one stage, independent of what ran before it."""
    digest = hashlib.sha256(f"{seed}/{stage}/{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def resolve_device(name: str) -> torch.device:
    """The run's device; a CUDA device on a machine without one is a clear error."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise RunError(f"device {name!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(
            f"device {name!r} asked for, but torch sees no CUDA device here; "
            'pass --set device="cpu"'
        )
    if device.type == "cuda" and device.index is None and distributed.is_distributed():
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    return device


#: The fewest rows a dataset split may have (an ELBO standard error needs two points).
MIN_POINTS = 2


def check_splits(splits: Splits) -> None:
    """Reject data that would silently poison training: NaN/inf, empty splits."""
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        if len(split) == 0:
            raise DataError(f"dataset split {name!r} is empty")
        if len(split) < MIN_POINTS:
            raise DataError(
                f"dataset split {name!r} has only {len(split)} point(s); at least "
                f"{MIN_POINTS} are needed"
            )
        if not torch.isfinite(split.x).all():
            bad = int((~torch.isfinite(split.x.reshape(len(split), -1)).all(1)).sum())
            raise DataError(f"dataset split {name!r} has {bad} samples with NaN or inf values")
    shapes = {tuple(getattr(splits, n).x.shape[1:]) for n in ("train", "val", "test")}
    if len(shapes) != 1:
        raise DataError(f"dataset splits disagree on the sample shape: {sorted(shapes)}")


class Experiment:
    """The components of one run, built from its config."""

    def __init__(self, cfg, registry, rundir: RunDir, progress: bool, oracle_workers: int = 0):
        self.cfg = cfg
        self.registry = registry
        self.rd = rundir
        self.progress = progress and distributed.is_main()
        self.device = resolve_device(cfg.device)
        self.process = build.make_process(cfg.process)
        self.dataset = build.make_dataset(registry, cfg.dataset)
        root = str(Path(cfg.data_root).expanduser())
        # rank 0 first, so that a dataset that builds a cache under data_root builds it once
        self.splits = distributed.main_first(
            lambda: self.dataset.load(root, stage_generator(cfg.seed, "data", "split"))
        )
        check_splits(self.splits)
        splits = self.splits
        self.splits = Splits(
            train=splits.train.to(self.device),
            val=splits.val.to(self.device),
            test=splits.test.to(self.device),
        )
        self.oracle = build.make_oracle(registry, cfg.oracle, dataset=self.dataset)
        self.labeller = OracleLabeller(self.oracle, cfg.oracle.name, oracle_workers)
        sampler_fn = registry.get("samplers", cfg.sampling.sampler)
        self.sampler = ModelSampler(
            sampler_fn,
            self.process,
            cfg.sampling.steps,
            cfg.sampling.options,
            self.splits.train,
            cfg.sampling.batch_size,
        )
        synth_steps = cfg.synth.steps or cfg.sampling.steps
        self.synth_sampler = ModelSampler(
            sampler_fn,
            self.process,
            synth_steps,
            cfg.sampling.options,
            self.splits.train,
            cfg.sampling.batch_size,
        )
        self.base = self.new_denoiser()
        self.config_toml = config_mod.dumps_toml(cfg)
        self.check_shapes()

    def check_shapes(self) -> None:
        """Feed two training points through the denoiser, a classifier and the oracle, so that
        data of the wrong shape (feature count) is a clear error before any training. Leaves
        the random streams and the models' train/eval modes as they were."""
        cfg, part = self.cfg, self.splits.train.index(torch.arange(2))
        what = f"dataset {cfg.dataset.name!r} gives samples of shape {tuple(part.x.shape[1:])}"
        sigma = torch.ones(len(part), device=self.device)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for role, name, make in (
                ("denoiser", cfg.denoiser.name, lambda: self.base),
                ("classifier", cfg.classifier.network.name, self.new_classifier),
            ):
                net = make()
                mode = net.training
                try:
                    out = net.eval()(part.x, sigma, **part.cond)
                except Exception as exc:
                    raise DataError(f"{what}, which {role} {name!r} cannot take: {exc}") from None
                finally:
                    net.train(mode)
                if role == "denoiser" and out.shape != part.x.shape:
                    raise DataError(
                        f"{what}, but denoiser {name!r} returns shape {tuple(out.shape[1:])}"
                    )
        self.labeller.label(part)  # an oracle that cannot take them raises OracleError

    def new_denoiser(self):
        return build.make_denoiser(self.registry, self.cfg.denoiser, self.process).to(self.device)

    def new_classifier(self):
        net = build.make_classifier(self.registry, self.cfg.classifier.network, self.process)
        return net.to(self.device)

    def guided(self, classifiers):
        c = self.cfg.classifier
        return GuidedDenoiser(
            self.base, windowed(classifiers, c.guidance_window, c.sigma_floor), c.guidance_scale
        )

    # --- evaluation ---
    def evaluate(self, stage: str, model) -> dict:
        cfg = self.cfg
        self.rd.log(
            f"{stage}: evaluating ({cfg.eval.n_samples} samples, ELBO on "
            f"{cfg.eval.elbo_points} {cfg.eval.elbo_split} points)"
        )
        counting = CountingDenoiser(model)
        gen = stage_generator(cfg.seed, stage, "eval-samples")
        lo, hi = distributed.share(cfg.eval.n_samples)  # this rank's share (all of them in one)
        t0 = time.perf_counter()
        samples = None
        if hi > lo:
            samples = self.sampler.sample(
                counting, hi - lo, distributed.rank_generator(gen), progress=self.progress
            )
        seconds = time.perf_counter() - t0
        labelled = self.labeller.label(samples) if samples is not None else None
        evals = counting.sample_evals
        if distributed.is_distributed():
            labelled = gather_labelled(labelled, self.oracle.categories)
            evals = distributed.all_reduce_sum([evals])[0]
            seconds = distributed.all_reduce_sum([seconds], op="max")[0]
        metrics, finite, part, result = infraction_metrics(
            self.oracle, cfg.oracle.name, None, labelled
        )
        n = len(finite)
        split = getattr(self.splits, cfg.eval.elbo_split)
        elbo = elbo_metrics(
            model,
            split,
            self.process,
            k=cfg.eval.elbo_k,
            points=cfg.eval.elbo_points,
            kind=cfg.eval.elbo,
            generator=stage_generator(cfg.seed, "eval", "elbo"),
            progress=self.progress,
            return_values=True,
        )
        values = elbo.pop("values")
        row = {
            "stage": stage,
            **metrics,
            **elbo,
            "nfe_per_sample": evals / n,
            "seconds_per_sample": seconds / n,
            "n_classifiers": len(getattr(model, "classifiers", ())),
        }
        # paired ELBO difference to the baseline and the -log(alpha) bound (rank 0 keeps the
        # per-point values in the run directory; every rank returns the same row)
        extra = None
        if distributed.is_main():
            part = split.index(torch.arange(len(values)))  # the ELBO's points
            dims = 1.0 / float((1.0 / real_dims(part.x, part.cond).double()).mean())
            extra = diagnostics.elbo_vs_baseline(self.rd, stage, values, dims)
        row.update(distributed.broadcast_object(extra))
        self.rd.metric("eval", **row)
        self.rd.log(
            f"{stage}: infraction {row['infraction']:.2f} ± {row['infraction_se']:.2f} %,"
            f" {row['elbo_kind']} {row['elbo']:.4f} ± {row['elbo_se']:.4f} nats/dim"
        )
        self.plot_stage(stage, part, result)
        return row

    def plot_stage(self, stage, part, result) -> None:
        if result is None or not distributed.is_main():
            return
        n = min(self.cfg.eval.plot_samples, len(part))
        part_n = part.index(torch.arange(n))
        path = self.rd.path / "plots" / f"samples_{stage}.png"
        title = f"{self.cfg.name}: {stage}"
        plot = getattr(self.dataset, "plot_samples", None)
        if plot is not None:
            from genneg.components import OracleResult

            sub = OracleResult(
                valid=result.valid[:n],
                categories={k: v[:n] for k, v in result.categories.items()},
                element_valid=None if result.element_valid is None else result.element_valid[:n],
            )
            with atomic_path(path) as tmp:
                plot(part_n, sub, str(tmp), title)
        elif part_n.x.ndim == 2 and part_n.x.shape[1] == 2:
            with atomic_path(path) as tmp:
                scatter_2d(part_n.x, result.valid[:n], tmp, title)

    def data_ceiling(self) -> float | None:
        split = getattr(self.splits, self.cfg.eval.elbo_split)
        n = min(self.cfg.eval.elbo_points, len(split))
        part = split.index(torch.arange(n)).to("cpu")
        logp = self.dataset.log_density(part.x)
        if logp is None:
            return None
        return float((logp / real_dims(part.x, part.cond)).mean())


def _load_shared(path, modules: dict) -> None:
    """Rank 0 loads the checkpoint, every rank receives its weights (no shared file system
    needed across nodes)."""
    distributed.main_first(lambda: _load_modules(path, modules) and None, others=False)
    for module in modules.values():
        distributed.broadcast_module(module)


def _load_modules(path, modules: dict) -> dict:
    payload = load_checkpoint(path)
    for key, module in modules.items():
        if key not in payload["modules"]:
            raise CheckpointError(f"{path} has no {key!r} weights")
        try:
            module.load_state_dict(payload["modules"][key])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: {key!r} weights do not fit the model: {exc}") from None
    return payload


def _prepare_rundir(cfg, out, resume: bool, quiet: bool) -> RunDir:
    rd = RunDir(out, quiet=quiet)
    toml_path = rd.path / "config.toml"
    text = config_mod.dumps_toml(cfg)
    if toml_path.exists():
        if not resume and rd.state()["done"]:
            raise RunError(
                f"{rd.path} already holds a run; pass --resume to continue it or "
                "choose another --out"
            )
        if resume and toml_path.read_text() != text:
            old = config_mod.to_dict(config_mod.from_dict(config_mod.load_toml(toml_path)))
            diff = _diff_keys(old, config_mod.to_dict(cfg))
            raise RunError(f"cannot resume {rd.path}: its config differs in {', '.join(diff)}")
    atomic_write_text(toml_path, text)
    return rd


def _diff_keys(a, b, prefix=""):
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _baseline_checkpoint(path: str) -> Path:
    p = Path(path).expanduser()
    return p / "ckpt" / "baseline.pt" if p.is_dir() else p


def run(
    cfg,
    out,
    *,
    resume: bool = False,
    registry=None,
    progress: bool = True,
    quiet: bool = False,
    oracle_workers: int = 0,
) -> list[dict]:
    """Run (or resume) a Gen-neG experiment; returns one metrics row per finished stage.

    ``oracle_workers > 0`` labels in that many CPU processes, overlapped with sampling (same
    labels as inline). Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the run
    joins the process group first and shards its work across the ranks."""
    registry = registry or get_registry()
    distributed.init_from_env(cfg.device)
    if distributed.is_main():
        rd = distributed.main_first(lambda: _prepare_rundir(cfg, out, resume, quiet), others=False)
    else:
        distributed.main_first(lambda: None, others=False)
        rd = RunDir(out, quiet=True, write=False)
    torch.manual_seed(cfg.seed)
    exp = Experiment(cfg, registry, rd, progress, oracle_workers=oracle_workers)
    try:
        return _run(exp, rd, registry)
    finally:
        exp.labeller.close()


def _run(exp: Experiment, rd: RunDir, registry) -> list[dict]:
    cfg, progress = exp.cfg, exp.progress
    state, rows = distributed.broadcast_object(
        (rd.state(), rd.read_metrics("eval")) if distributed.is_main() else None
    )
    done = set(state["done"])
    rows = {r["stage"]: r for r in rows if r["stage"] in done}
    log = rd.log

    # Stage 0: the baseline DM (Algorithm 1, line 2; Eq. 5).
    if "baseline" in done:
        _load_shared(rd.ckpt_path("baseline"), {"denoiser": exp.base})
        log("baseline: loaded from checkpoint")
    else:
        if cfg.baseline_from:
            src = _baseline_checkpoint(cfg.baseline_from)
            _load_shared(src, {"denoiser": exp.base})
            log(f"baseline: reused from {src}")
        else:
            t0 = time.perf_counter()
            gen = stage_generator(cfg.seed, "baseline", "train")
            loss = DenoisingLoss(exp.process)
            train = exp.splits.train
            exp.base.train()
            hist = fit(
                exp.base.parameters(),
                lambda step: denoising_loss(
                    loss, exp.base, *_xc(minibatch(train, cfg.baseline.batch_size, gen)), gen
                ),
                cfg.baseline,
                desc="baseline",
                progress=progress,
                log=log,
                sharded=True,
            )
            rd.metric("train", stage="baseline", history=hist, seconds=time.perf_counter() - t0)
            log(f"baseline: trained {cfg.baseline.steps} steps in {time.perf_counter() - t0:.1f} s")
        rd.save("baseline", {"denoiser": exp.base}, exp.config_toml)
        exp.base.eval()
        rows["baseline"] = exp.evaluate("baseline", exp.base)
        rd.mark_done("baseline")
    exp.base.eval()
    for p in exp.base.parameters():
        p.requires_grad_(False)

    # Gen-neG iterations (Algorithm 1's while loop; stacking by Eq. 9).
    classifiers = []
    stopped = state.get("stopped")
    for i in range(1, cfg.iterations + 1):
        stage = f"iter{i}"
        clf = exp.new_classifier()
        if stage in done:
            _load_shared(rd.ckpt_path(stage), {"classifier": clf})
            clf.eval().requires_grad_(False)
            classifiers.append(clf)
            log(f"{stage}: loaded from checkpoint")
            continue
        if stopped:
            break
        t0 = time.perf_counter()
        try:
            synth = draw_labelled(
                exp.synth_sampler,
                exp.guided(classifiers),
                exp.oracle,
                cfg.oracle.name,
                cfg.synth,
                keep_natural=cfg.classifier.weighting == "imbalanced",
                generator=stage_generator(cfg.seed, stage, "synth"),
                progress=progress,
                log=log,
                labeller=exp.labeller,
            )
        except NoNegativesError as exc:
            last = rows.get(f"iter{i - 1}" if i > 1 else "baseline")
            stopped = f"{exc}; {_summary(last)}" if last else str(exc)
            log(f"{stage}: stopping the Gen-neG loop: {stopped}")
            rd.mark_done("stopped", stopped=stopped)
            break
        t_synth = time.perf_counter() - t0
        rd.metric("synth", stage=stage, seconds=t_synth, **synth.summary())
        log(
            f"{stage}: drew {synth.n_drawn} samples in {t_synth:.1f} s "
            f"({synth.n_negative} infracting), alpha = {synth.alpha:.4f}"
        )
        synth, held = diagnostics.hold_out(
            synth, cfg.classifier.holdout, stage_generator(cfg.seed, stage, "holdout")
        )
        t0 = time.perf_counter()
        clf.train()
        hist = train_classifier(
            clf,
            synth,
            weighting=cfg.classifier.weighting,
            process=exp.process,
            train=cfg.classifier.train,
            targets=cfg.classifier.targets,
            generator=stage_generator(cfg.seed, stage, "train"),
            progress=progress,
            log=log,
        )
        rd.metric("train", stage=stage, history=hist, seconds=time.perf_counter() - t0)
        clf.eval().requires_grad_(False)
        if held is not None and distributed.is_main():
            diag = diagnostics.record(
                rd,
                stage,
                clf,
                held,
                synth,
                weighting=cfg.classifier.weighting,
                process=exp.process,
                generator=stage_generator(cfg.seed, stage, "diagnostics"),
                valid_data=exp.splits.val,
            )
            log(f"{stage}: classifier on held-out data: {diagnostics.summary(diag)}")
        classifiers.append(clf)
        rd.save(stage, {"classifier": clf}, exp.config_toml, {"synth": synth.summary()})
        rows[stage] = exp.evaluate(stage, exp.guided(classifiers))
        rd.mark_done(stage)

    # Distillation of the stacked model into one denoiser (Eq. 14).
    if cfg.distill.enabled and classifiers:
        student = exp.new_denoiser()
        if "distill" in done:
            _load_shared(rd.ckpt_path("distill"), {"denoiser": student})
            log("distill: loaded from checkpoint")
        else:
            student.load_state_dict(exp.base.state_dict())  # initialised from the baseline
            student.requires_grad_(True).train()
            distiller = registry.get("distillers", cfg.distill.distiller)
            t0 = time.perf_counter()
            hist = distiller(
                student,
                exp.guided(classifiers),
                exp.splits.train,
                process=exp.process,
                train=cfg.distill.train,
                generator=stage_generator(cfg.seed, "distill", "train"),
                progress=progress,
                log=log,
                **cfg.distill.options,
            )
            rd.metric("train", stage="distill", history=hist, seconds=time.perf_counter() - t0)
            student.eval()
            rd.save("distill", {"denoiser": student}, exp.config_toml)
            rows["distill"] = exp.evaluate("distill", student)
            rd.mark_done("distill")

    ordered = [rows[s] for s in _stage_order(cfg) if s in rows]
    if distributed.is_main():
        finish(exp, ordered)
    distributed.barrier()  # the other ranks return once the results are written
    return ordered


def _summary(row: dict) -> str:
    """A stage's headline metrics, for messages."""
    return (
        f"{row['stage']} has infraction {row['infraction']:.2f} ± {row['infraction_se']:.2f} % "
        f"in {row['n']} samples, {row['elbo_kind']} {row['elbo']:.4f} ± {row['elbo_se']:.4f} "
        "nats/dim"
    )


def _stage_order(cfg):
    return ["baseline"] + [f"iter{i}" for i in range(1, cfg.iterations + 1)] + ["distill"]


def _xc(split):
    return split.x, split.cond


def finish(exp: Experiment, rows: list[dict]) -> None:
    """Write the results table, JSON and curves of a run."""
    ceiling = exp.data_ceiling()
    table = results_table(rows, categories=exp.oracle.categories, ceiling=ceiling)
    atomic_write_text(exp.rd.path / "results.md", table + "\n")
    atomic_write_text(
        exp.rd.path / "results.json",
        json.dumps({"rows": rows, "data_log_density": ceiling}, indent=1),
    )
    if rows:
        with atomic_path(exp.rd.path / "plots" / "curves.png") as tmp:
            stage_curves(rows, tmp, ceiling=ceiling if ceiling is not None else math.nan)
    exp.rd.log("results:\n" + table)
