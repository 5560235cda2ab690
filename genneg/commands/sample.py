"""``genneg sample RUN_DIR``: samples from a finished run's models, optionally only valid ones.

``--valid-only`` turns any stage into a sampler of oracle-valid output: whatever the oracle
still flags is rejected and drawn again, up to ``--max-draws`` samples in all (Sec. 1's
rejection loop around the model). The report says how many draws that took.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import torch

from genneg import config as config_mod


class SampleError(click.ClickException):
    pass


class BudgetExceeded(RuntimeError):
    """``--valid-only`` found too few valid samples within the draw budget."""


def finished_stages(run_dir: Path) -> list[str]:
    from genneg.engine.rundir import RunDir

    done = RunDir(run_dir, quiet=True).state()["done"]
    return [s for s in done if s == "baseline" or s == "distill" or re.fullmatch(r"iter\d+", s)]


def default_stage(stages: list[str]) -> str:
    """The run's final model: ``distill``, else its last ``iterK``, else ``baseline``."""
    if "distill" in stages:
        return "distill"
    iters = sorted((int(s[4:]) for s in stages if s.startswith("iter")), reverse=True)
    return f"iter{iters[0]}" if iters else "baseline"


class LoadedRun:
    """A finished run's components (config.toml) and the model of one stage (ckpt/*.pt)."""

    def __init__(self, run_dir, stage: str | None = None, registry=None, device="cpu"):
        from genneg.engine import build
        from genneg.engine.rundir import CheckpointError, load_checkpoint
        from genneg.engine.runner import stage_generator
        from genneg.engine.sampling import ModelSampler
        from genneg.plugins import get_registry

        self.path = Path(run_dir)
        if not (self.path / "config.toml").exists():
            raise SampleError(f"{self.path} has no config.toml: not a genneg run directory")
        registry = registry or get_registry()
        self.cfg = cfg = config_mod.from_dict(config_mod.load_toml(self.path / "config.toml"))
        stages = finished_stages(self.path)
        if not stages:
            raise SampleError(f"{self.path} has no finished stage yet")
        self.stage = stage or default_stage(stages)
        if self.stage not in stages:
            raise SampleError(
                f"stage {self.stage!r} is not finished in {self.path} (finished: "
                f"{', '.join(stages)})"
            )
        self.device = torch.device(device)
        self.process = build.make_process(cfg.process)
        self.dataset = build.make_dataset(registry, cfg.dataset)
        root = str(Path(cfg.data_root).expanduser())
        splits = self.dataset.load(root, stage_generator(cfg.seed, "data", "split"))
        self.train = splits.train.to(self.device)
        self.oracle = build.make_oracle(registry, cfg.oracle, dataset=self.dataset)

        def weights(stage, key, module):
            payload = load_checkpoint(self.path / "ckpt" / f"{stage}.pt")
            try:
                module.load_state_dict(payload["modules"][key])
            except (KeyError, RuntimeError) as exc:
                raise CheckpointError(f"{stage}.pt: {key!r} weights do not fit: {exc}") from None
            return module.to(self.device).eval().requires_grad_(False)

        def denoiser(stage):
            return weights(
                stage, "denoiser", build.make_denoiser(registry, cfg.denoiser, self.process)
            )

        if self.stage == "distill":
            self.model = denoiser("distill")
        elif self.stage == "baseline":
            self.model = denoiser("baseline")
        else:
            from genneg.guidance import GuidedDenoiser

            k = int(self.stage[4:])
            clfs = [
                weights(
                    f"iter{i}",
                    "classifier",
                    build.make_classifier(registry, cfg.classifier.network, self.process),
                )
                for i in range(1, k + 1)
            ]
            self.model = GuidedDenoiser(denoiser("baseline"), clfs, cfg.classifier.guidance_scale)
        self.sampler = ModelSampler(
            registry.get("samplers", cfg.sampling.sampler),
            self.process,
            cfg.sampling.steps,
            cfg.sampling.options,
            self.train,
            cfg.sampling.batch_size,
        )


def draw_valid(
    loaded: LoadedRun,
    n: int,
    generator,
    *,
    valid_only: bool,
    max_draws: int,
    batch_size: int | None = None,
):
    """``n`` samples; with ``valid_only`` only oracle-valid ones, drawing batches until ``n``
    are valid or ``max_draws`` samples were drawn (then :class:`BudgetExceeded`).

    Returns ``(DataSplit, valid [n] bool, draws)``.
    """
    from genneg.components import DataSplit
    from genneg.engine.synth import label_batch

    batch_size = batch_size or loaded.sampler.batch_size
    kept, flags, draws = [], [], 0
    n_valid = 0
    while n_valid < n if valid_only else draws < n:
        if draws >= max_draws:
            raise BudgetExceeded(
                f"only {n_valid} of {n} valid samples in {draws} draws (budget --max-draws="
                f"{max_draws}); the oracle rejected {draws - n_valid} of {draws} "
                f"({100 * (draws - n_valid) / max(draws, 1):.1f} %): raise --max-draws or "
                "use a later stage"
            )
        want = (n - n_valid) if valid_only else (n - draws)
        if valid_only and n_valid:  # ask for what the observed rate says is missing
            want = round(want * draws / n_valid * 1.1) + 1
        b = min(batch_size, max(want, 1), max_draws - draws)
        batch = loaded.sampler.sample(loaded.model, b, generator)
        draws += b
        finite, part, result = label_batch(loaded.oracle, loaded.cfg.oracle.name, batch)
        valid = torch.zeros(b, dtype=torch.bool)
        if result is not None:
            valid[finite.nonzero().squeeze(1)] = result.valid
        batch = batch.to("cpu")
        if valid_only:
            idx = valid.nonzero().squeeze(1)[: n - n_valid]
            batch, valid = batch.index(idx), valid[idx]
        kept.append(batch)
        flags.append(valid)
        n_valid += int(valid.sum())
    x = torch.cat([k.x for k in kept])
    cond = {key: torch.cat([k.cond[key] for k in kept]) for key in kept[0].cond}
    return DataSplit(x=x, cond=cond), torch.cat(flags), draws


@click.command("sample")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--stage",
    default=None,
    help="baseline, iterK (the stack of K classifiers) or distill; default: the run's final model.",
)
@click.option("-n", "n", type=int, default=1000, show_default=True, help="Samples to return.")
@click.option(
    "--valid-only",
    is_flag=True,
    help="Reject what the oracle flags and draw again until N are valid.",
)
@click.option(
    "--max-draws",
    type=int,
    default=None,
    help="With --valid-only: at most this many samples drawn (default 100 N).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Save x, cond, valid and the draw count (torch.save, tensors only).",
)
def sample_cmd(run_dir, stage, n, valid_only, max_draws, seed, device, out):
    """Sample from the models of the finished run RUN_DIR."""
    from genneg.engine.build import BuildError
    from genneg.engine.rundir import CheckpointError
    from genneg.plugins import PluginError, UnknownComponentError

    if n <= 0:
        raise SampleError("-n must be positive")
    max_draws = max_draws or 100 * n
    try:
        loaded = LoadedRun(run_dir, stage, device=device)
        split, valid, draws = draw_valid(
            loaded,
            n,
            torch.Generator().manual_seed(seed),
            valid_only=valid_only,
            max_draws=max_draws,
        )
    except (
        BudgetExceeded,
        CheckpointError,
        BuildError,
        UnknownComponentError,
        PluginError,
        config_mod.ConfigError,
    ) as exc:
        raise SampleError(str(exc)) from None
    n_valid = int(valid.sum())
    if valid_only:
        click.echo(
            f"{loaded.stage}: {n} valid samples from {draws} draws "
            f"({100 * (draws - n) / draws:.1f} % rejected by the oracle)"
        )
    else:
        click.echo(
            f"{loaded.stage}: {n} samples, {n_valid} valid "
            f"({100 * (n - n_valid) / n:.1f} % infracting)"
        )
    if out:
        torch.save(
            {
                "x": split.x,
                "cond": split.cond,
                "valid": valid,
                "draws": draws,
                "stage": loaded.stage,
            },
            out,
        )
        click.echo(f"wrote {out}")
