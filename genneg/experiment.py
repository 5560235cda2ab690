"""The one way to a run's parts: :class:`Experiment`.

An experiment is built from a config (``Experiment.from_config(cfg)``) or from a run directory
(``Experiment.from_run_dir(path)``, whose ``config.toml`` it reads and whose checkpoints
:meth:`Experiment.load_stage` loads). It holds what Algorithm 1 works with: the noise process,
the dataset's checked splits, the oracle and its labeller, the samplers, the baseline denoiser,
and factories for classifiers and students. The runner, ``genneg sample``, the benchmarks and
the plugins' table commands all get their parts here::

    exp = Experiment.from_run_dir("runs/checkerboard")
    model = exp.load_stage("iter2")              # the baseline guided by 2 stacked classifiers
    samples = exp.sample(model, 1000, torch.Generator().manual_seed(0))
    print(exp.label(samples).valid.float().mean())
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import attrs
import torch

from genneg import config as config_mod
from genneg import distributed
from genneg.components import DataSplit, Splits
from genneg.engine import build
from genneg.engine.data import load_splits
from genneg.engine.labelling import Labelled, OracleLabeller
from genneg.engine.rundir import RunDir, load_modules
from genneg.engine.sampling import ModelSampler
from genneg.errors import BuildError, DataError, RunError
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.plugins import get_registry
from genneg.precision import at_precision
from genneg.student import make_student
from genneg.window import windowed

#: Names of a run's stages: the baseline, the stack after K classifiers, the distilled model.
STAGE_PATTERN = re.compile(r"baseline|distill|iter[1-9]\d*")


class Experiment:
    """The components of one run, built from its config.

    :ivar cfg: the :class:`genneg.config.RunConfig`.
    :ivar process: the noise process (:class:`genneg.components.NoiseProcess`).
    :ivar dataset: the dataset component; ``splits`` its checked train/val/test splits.
    :ivar oracle: the oracle; ``labeller`` labels with it (inline or in worker processes).
    :ivar sampler: draws evaluation samples; ``synth_sampler`` the synthetic sets' samples.
    :ivar base: the baseline denoiser (untrained until trained or loaded).
    :ivar run_dir: the run directory whose checkpoints :meth:`load_stage` reads, if any.
    """

    def __init__(self, cfg, *, registry=None, run_dir=None, device=None, oracle_workers=0):
        """The experiment of ``cfg``, its parts built on first use (:meth:`from_config` and
        :meth:`from_run_dir` build them all at once and check the data)."""
        self.cfg = cfg
        self.registry = registry or get_registry()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = build.resolve_device(device or cfg.device)
        self.process = build.make_process(cfg.process)
        self.config_toml = config_mod.dumps_toml(cfg)
        self.oracle_workers = oracle_workers

    @classmethod
    def from_config(cls, cfg, **kwargs) -> Experiment:
        """The experiment of ``cfg`` with every part built and the data's shapes checked
        against the models and the oracle (keywords: ``registry``, ``run_dir``, ``device``,
        ``oracle_workers``)."""
        exp = cls(cfg, **kwargs)
        exp.prepare()
        return exp

    @classmethod
    def from_run_dir(cls, path, *, registry=None, device=None) -> Experiment:
        """The experiment of the run directory ``path`` (its ``config.toml``), whose finished
        stages :meth:`load_stage` loads."""
        path = Path(path)
        if not (path / "config.toml").exists():
            raise RunError(f"{path} has no config.toml: not a genneg run directory")
        cfg = config_mod.from_dict(config_mod.load_toml(path / "config.toml"))
        return cls.from_config(cfg, registry=registry, run_dir=path, device=device)

    def prepare(self) -> None:
        """Build every part (in the order that fixes the run's random streams: data, oracle,
        samplers, then the baseline's initial weights) and check the data's shapes."""
        for part in ("splits", "labeller", "sampler", "synth_sampler", "base"):
            getattr(self, part)
        self.check_shapes()

    # --- parts, each built on first use ---
    @functools.cached_property
    def dataset(self):
        return build.make_dataset(self.registry, self.cfg.dataset)

    @functools.cached_property
    def splits(self) -> Splits:
        return load_splits(self.dataset, self.cfg, self.device)

    @functools.cached_property
    def oracle(self):
        return build.make_oracle(self.registry, self.cfg.oracle)

    @functools.cached_property
    def labeller(self) -> OracleLabeller:
        return OracleLabeller(self.oracle, self.cfg.oracle.name, self.oracle_workers)

    @functools.cached_property
    def sampler(self) -> ModelSampler:
        split = getattr(self.splits, self.cfg.eval.condition_split)
        return self._sampler(self.cfg.sampling.steps, split)

    @functools.cached_property
    def synth_sampler(self) -> ModelSampler:
        return self._sampler(self.cfg.synth.steps or self.cfg.sampling.steps, self.splits.train)

    def _sampler(self, steps: int, split: DataSplit) -> ModelSampler:
        sampling = self.cfg.sampling
        fn = self.registry.get("samplers", sampling.sampler)
        return ModelSampler(
            fn, self.process, steps, sampling.options, split, sampling.batch_size,
            sampling.precision,
        )  # fmt: skip

    @functools.cached_property
    def base(self):
        return self.new_denoiser()

    # --- models ---
    def new_denoiser(self):
        """A fresh (untrained) denoiser of the config's architecture, on the run's device."""
        net = build.make_denoiser(self.registry, self.cfg.denoiser, self.process)
        return net.to(self.device)

    def new_student(self) -> torch.nn.Module:
        """A fresh (untrained) distillation student of ``distill.student``'s kind
        (:mod:`genneg.student`), on the run's device; with ``distill.in_window`` confined to
        ``classifier.guidance_window``."""
        d = self.cfg.distill
        window = self.cfg.classifier.guidance_window if d.in_window else ()
        return make_student(d.student, self.new_denoiser, self.process, window, self.new_correction)

    def new_correction(self):
        """A fresh denoiser of the baseline's architecture with ``distill.correction``'s
        options (a residual student's correction network is its ``.network``)."""
        spec = self.cfg.denoiser
        options = {**spec.options, **self.cfg.distill.correction}
        spec = attrs.evolve(spec, options=options)
        try:
            net = build.make_denoiser(self.registry, spec, self.process)
        except BuildError as exc:
            raise BuildError(f"distill.correction: {exc}") from exc
        return net.to(self.device)

    def new_classifier(self) -> TimeClassifier:
        """A fresh (untrained) guidance classifier, on the run's device (with the
        ``denoised`` input, reading :attr:`base`: train or load the baseline first)."""
        c = self.cfg.classifier
        net = build.make_classifier(self.registry, c.network, self.process, c.input, self.base)
        return net.to(self.device)

    def guided(self, classifiers) -> GuidedDenoiser:
        """The baseline guided by the stack ``classifiers`` (Eq. 9), each in the config's
        guidance window (:mod:`genneg.window`)."""
        c = self.cfg.classifier
        stack = windowed(classifiers, c.guidance_window, c.sigma_floor)
        return GuidedDenoiser(self.base, stack, c.guidance_scale)

    def teacher(self, classifiers) -> torch.nn.Module:
        """The distillation teacher: :meth:`guided` evaluated at ``sampling.precision``
        (:mod:`genneg.precision`; the student's loss and gradients stay float32)."""
        return at_precision(self.guided(classifiers), self.sampler.precision)

    # --- finished stages ---
    def finished_stages(self) -> list[str]:
        """The stages of :attr:`run_dir` whose checkpoint was written, in run order."""
        done = RunDir(self._need_run_dir(), quiet=True, write=False).state()["done"]
        return [s for s in done if STAGE_PATTERN.fullmatch(s)]

    def checkpoint(self, stage: str) -> Path:
        return self._need_run_dir() / "ckpt" / f"{stage}.pt"

    def load_weights(self, path, modules: dict) -> None:
        """Load ``modules`` (key -> module) from the checkpoint ``path``. Under torchrun rank 0
        reads the file and every rank receives the weights (no shared file system needed)."""
        distributed.main_first(lambda: load_modules(path, modules) and None, others=False)
        for module in modules.values():
            distributed.broadcast_module(module)

    def load_stage(self, stage: str):
        """The model of a finished ``stage``: ``baseline`` (:attr:`base`, loaded), ``iterK``
        (the baseline guided by the stack of classifiers 1..K) or ``distill`` (the student);
        in eval mode, without gradients."""
        if not STAGE_PATTERN.fullmatch(stage):
            raise RunError(f"no stage named {stage!r}: stages are baseline, iterK and distill")
        done = self.finished_stages()
        if stage not in done:
            raise RunError(
                f"stage {stage!r} is not finished in {self.run_dir} (finished: "
                f"{', '.join(done) or 'none'})"
            )
        if stage == "distill":
            return self._frozen(self.new_student(), "denoiser", self.checkpoint("distill"))
        self._frozen(self.base, "denoiser", self.checkpoint("baseline"))
        if stage == "baseline":
            return self.base
        return self.guided([self.load_classifier(i) for i in range(1, int(stage[4:]) + 1)])

    def load_classifier(self, iteration: int) -> TimeClassifier:
        """The classifier trained at Gen-neG iteration ``iteration`` of :attr:`run_dir`."""
        path = self.checkpoint(f"iter{iteration}")
        return self._frozen(self.new_classifier(), "classifier", path)

    def _frozen(self, module, key: str, path):
        self.load_weights(path, {key: module})
        return module.eval().requires_grad_(False)

    def _need_run_dir(self) -> Path:
        if self.run_dir is None:
            raise RunError("this experiment has no run directory (use Experiment.from_run_dir)")
        return self.run_dir

    # --- sampling and labelling ---
    def sample(self, model, n: int, generator, *, progress: bool = False) -> DataSplit:
        """``n`` samples of ``model`` with the run's sampler, conditions resampled from the
        split ``cfg.eval.condition_split`` (default: training); all randomness from
        ``generator``."""
        return self.sampler.sample(model, n, generator, progress=progress)

    def label(self, samples: DataSplit) -> Labelled:
        """The oracle's labels of ``samples``."""
        return self.labeller.label(samples)

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
        self.label(part)  # an oracle that cannot take them raises OracleError

    def close(self) -> None:
        """Stop the labeller's worker processes, if any."""
        if "labeller" in self.__dict__:
            self.labeller.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
