"""Algorithm 1 of the paper, with evaluation of every stage, checkpoints and resume.

Stages: ``baseline`` (train or reuse the DM), ``iter1 .. iterK`` (synthetic labelled set,
classifier with Eq. 13, stacked by Eq. 9), ``distill`` (Eq. 14). Each finished stage is
checkpointed and recorded in ``state.json``; ``resume=True`` reloads finished stages and
continues with the first unfinished one, with the same random streams as an uninterrupted
run (each stage seeds its own generators from the run seed and the stage name,
:func:`genneg.rng.stage_generator`).

Under ``torchrun`` (see :mod:`genneg.distributed` and docs/distributed.md) every rank runs
this same code: sampling, labelling and evaluation are sharded across ranks, training steps
use gradients all-reduced over the ranks' shares of each batch, and only rank 0 writes files,
logs and shows progress bars.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch

from genneg import diagnostics, distributed
from genneg.engine.distill import distillation_inputs
from genneg.engine.evaluate import evaluate_stage
from genneg.engine.results import headline, write_results
from genneg.engine.rundir import RunDir, prepare_rundir
from genneg.engine.synth import draw_labelled
from genneg.engine.train import train_classifier, train_denoiser
from genneg.engine.warm_start import copy_matching
from genneg.errors import ClassTooRareError
from genneg.experiment import Experiment
from genneg.plugins import get_registry
from genneg.rng import stage_generator
from genneg.student import init_student


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
    """Run (or resume) a Gen-neG experiment in the directory ``out``; returns one metrics row
    per finished stage.

    ``oracle_workers > 0`` labels in that many CPU processes, overlapped with sampling (same
    labels as inline). Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the run
    joins the process group first and shards its work across the ranks."""
    registry = registry or get_registry()
    distributed.init_from_env(cfg.device)
    if distributed.is_main():
        rd = distributed.main_first(
            lambda: prepare_rundir(cfg, out, resume=resume, quiet=quiet), others=False
        )
    else:
        distributed.main_first(lambda: None, others=False)
        rd = RunDir(out, quiet=True, write=False)
    torch.manual_seed(cfg.seed)
    exp = Experiment.from_config(
        cfg, registry=registry, run_dir=rd.path, oracle_workers=oracle_workers
    )
    try:
        return _Run(exp, rd, progress and distributed.is_main()).algorithm1()
    finally:
        exp.close()


class _Run:
    """One execution of Algorithm 1 over a run directory that may hold finished stages."""

    def __init__(self, exp: Experiment, rd: RunDir, progress: bool):
        self.exp, self.cfg, self.rd, self.progress = exp, exp.cfg, rd, progress
        state, rows = distributed.broadcast_object(
            (rd.state(), rd.read_evals()) if distributed.is_main() else None
        )
        self.done = set(state["done"])
        self.stopped = state.get("stopped")
        self.rows = rows  # stage -> evaluation row, of the finished stages

    def stage(self, name: str, modules: dict, compute, model=None) -> bool:
        """A stage of the run: if it finished before, load ``modules`` (key -> module) from
        its checkpoint; else ``compute()`` them (trained in place; it may return plain data
        for the checkpoint), save them, evaluate ``model()`` and mark the stage done.
        Returns whether the stage was computed now."""
        if name in self.done:
            self.exp.load_weights(self.rd.ckpt_path(name), modules)
            self.rd.log(f"{name}: loaded from checkpoint")
            return False
        extra = compute()
        self.rd.save(name, modules, self.exp.config_toml, extra)
        self.rows[name] = evaluate_stage(self.exp, name, model(), self.rd, progress=self.progress)
        self.rd.mark_done(name)
        return True

    def generator(self, stage: str, purpose: str) -> torch.Generator:
        return stage_generator(self.cfg.seed, stage, purpose)

    def algorithm1(self) -> list[dict]:
        exp, cfg = self.exp, self.cfg
        # Stage 0: the baseline DM (Algorithm 1, line 2; Eq. 5).
        base = exp.base
        self.stage("baseline", {"denoiser": base}, self.train_baseline, lambda: base.eval())
        base.eval().requires_grad_(False)

        # Gen-neG iterations (Algorithm 1's while loop; stacking by Eq. 9).
        classifiers = []
        for i in range(1, cfg.iterations + 1):
            name, clf = f"iter{i}", exp.new_classifier()
            if self.stopped and name not in self.done:
                break
            try:
                self.stage(
                    name,
                    {"classifier": clf},
                    partial(self.train_classifier, name, clf, classifiers),
                    partial(exp.guided, [*classifiers, clf]),
                )
            except ClassTooRareError as exc:
                self.stop(name, i, exc)
                break
            classifiers.append(clf.eval().requires_grad_(False))

        # Distillation of the stacked model into one denoiser (Eq. 14).
        if cfg.distill.enabled and classifiers:
            student = exp.new_student()
            self.stage(
                "distill",
                {"denoiser": student},
                lambda: self.distill(student, classifiers),
                lambda: student.eval(),
            )

        order = ["baseline", *(f"iter{i}" for i in range(1, cfg.iterations + 1)), "distill"]
        ordered = [self.rows[s] for s in order if s in self.rows]
        if distributed.is_main():
            write_results(exp, self.rd, ordered)
        distributed.barrier()  # the other ranks return once the results are written
        return ordered

    def train_baseline(self) -> None:
        exp, cfg, rd = self.exp, self.cfg, self.rd
        if cfg.baseline_from:
            src = Path(cfg.baseline_from).expanduser()
            src = src / "ckpt" / "baseline.pt" if src.is_dir() else src
            exp.load_weights(src, {"denoiser": exp.base})
            rd.log(f"baseline: reused from {src}")
            return
        t0 = time.perf_counter()
        exp.base.train()
        hist = train_denoiser(
            exp.base,
            exp.splits.train,
            process=exp.process,
            train=cfg.baseline,
            generator=self.generator("baseline", "train"),
            progress=self.progress,
            log=rd.log,
        )
        rd.metric("train", stage="baseline", history=hist, seconds=time.perf_counter() - t0)
        rd.log(f"baseline: trained {cfg.baseline.steps} steps in {time.perf_counter() - t0:.1f} s")

    def train_classifier(self, name: str, clf, classifiers: list) -> dict:
        """Algorithm 1's loop body: a labelled synthetic set from the current (stacked) model,
        then a classifier trained on it with Eq. (13)."""
        exp, cfg, rd = self.exp, self.cfg, self.rd
        t0, current = time.perf_counter(), exp.guided(classifiers)
        synth = draw_labelled(
            exp.synth_sampler,
            current,
            exp.oracle,
            cfg.oracle.name,
            cfg.synth,
            keep_natural=cfg.classifier.weighting == "imbalanced",
            generator=self.generator(name, "synth"),
            progress=self.progress,
            log=rd.log,
            labeller=exp.labeller,
        )
        t_synth = time.perf_counter() - t0
        rd.metric("synth", stage=name, seconds=t_synth, **synth.summary(), **synth.timings())
        rd.log(
            f"{name}: drew {synth.n_drawn} samples in {t_synth:.1f} s (sampling "
            f"{synth.sampling_seconds:.1f} s, labelling {synth.labelling_seconds:.1f} s; "
            f"{synth.n_negative} infracting), alpha = {synth.alpha:.4f}"
        )
        synth, held = diagnostics.hold_out(
            synth, cfg.classifier.holdout, self.generator(name, "holdout")
        )
        if cfg.classifier.init == "baseline":
            copied = copy_matching(clf, exp.base)
            total = len(clf.state_dict())
            rd.log(f"{name}: classifier starts from the baseline ({len(copied)}/{total} tensors)")
        t0 = time.perf_counter()
        hist = train_classifier(
            clf.train(),
            synth,
            **cfg.classifier.loss_options(),
            held=held,
            model=current,
            score_data=exp.splits.train,
            process=exp.process,
            train=cfg.classifier.train,
            generator=self.generator(name, "train"),
            progress=self.progress,
            log=rd.log,
        )
        rd.metric("train", stage=name, history=hist, seconds=time.perf_counter() - t0)
        clf.eval().requires_grad_(False)
        if held is not None and distributed.is_main():  # per-noise-level diagnostics
            gen, weighting = self.generator(name, "diagnostics"), cfg.classifier.weighting
            diag = diagnostics.record(
                rd, name, clf, held, synth, weighting=weighting, process=exp.process,
                generator=gen, valid_data=exp.splits.val,
            )  # fmt: skip
            rd.log(f"{name}: classifier on held-out data: {diagnostics.summary(diag)}")
        return {"synth": synth.summary()}

    def distill(self, student, classifiers: list) -> None:
        exp, cfg = self.exp, self.cfg
        init_student(student, exp.base)  # from the baseline (genneg.student)
        distiller = exp.registry.get("distillers", cfg.distill.distiller)
        t0, gen = time.perf_counter(), self.generator("distill", "samples")
        inputs = distillation_inputs(exp, classifiers, gen, self.rd.log)  # data (+ states)
        hist = distiller(
            student,
            exp.teacher(classifiers),
            **inputs,
            process=exp.process,
            train=cfg.distill.train,
            generator=self.generator("distill", "train"),
            progress=self.progress,
            log=self.rd.log,
            **cfg.distill.options,
        )
        seconds = time.perf_counter() - t0
        self.rd.metric("train", stage="distill", history=hist, seconds=seconds)

    def stop(self, name: str, i: int, exc: ClassTooRareError) -> None:
        """End the Gen-neG loop early: the model has (almost) no infractions left to learn
        from; the message carries the last stage's metrics."""
        last = self.rows.get(f"iter{i - 1}" if i > 1 else "baseline")
        self.stopped = f"{exc}; {headline(last)}" if last else str(exc)
        self.rd.log(f"{name}: stopping the Gen-neG loop: {self.stopped}")
        self.rd.mark_done("stopped", stopped=self.stopped)
