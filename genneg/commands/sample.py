"""``genneg sample RUN_DIR``: samples from a finished run's models, optionally only valid ones.

``--valid-only`` turns any stage into a sampler of oracle-valid output: whatever the oracle
still flags is rejected and drawn again, up to ``--max-draws`` samples in all (Sec. 1's
rejection loop around the model). The report says how many draws that took.
"""

from __future__ import annotations

import click
import torch

from genneg.components import DataSplit
from genneg.errors import GennegError
from genneg.experiment import Experiment


class SampleError(click.ClickException):
    pass


class BudgetExceeded(GennegError):
    """``--valid-only`` found too few valid samples within the draw budget."""


def default_stage(stages: list[str]) -> str:
    """The run's final model: ``distill``, else its last ``iterK``, else ``baseline``."""
    if "distill" in stages:
        return "distill"
    iters = sorted((int(s[4:]) for s in stages if s.startswith("iter")), reverse=True)
    return f"iter{iters[0]}" if iters else "baseline"


def draw_valid(
    exp: Experiment,
    model,
    n: int,
    generator,
    *,
    valid_only: bool,
    max_draws: int,
    batch_size: int | None = None,
):
    """``n`` samples of ``model``; with ``valid_only`` only oracle-valid ones, drawing batches
    until ``n`` are valid or ``max_draws`` samples were drawn (then :class:`BudgetExceeded`).

    Returns ``(DataSplit, valid [n] bool, draws)``.
    """
    batch_size = batch_size or exp.sampler.batch_size
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
        batch = exp.sample(model, b, generator)
        draws += b
        valid = exp.label(batch).valid
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
    from genneg.cli import USER_ERRORS

    if n <= 0:
        raise SampleError("-n must be positive")
    max_draws = max_draws or 100 * n
    try:
        with Experiment.from_run_dir(run_dir, device=device) as exp:
            stage = stage or default_stage(exp.finished_stages())
            split, valid, draws = draw_valid(
                exp,
                exp.load_stage(stage),
                n,
                torch.Generator().manual_seed(seed),
                valid_only=valid_only,
                max_draws=max_draws,
            )
    except USER_ERRORS as exc:
        raise SampleError(str(exc)) from None
    n_valid = int(valid.sum())
    if valid_only:
        click.echo(
            f"{stage}: {n} valid samples from {draws} draws "
            f"({100 * (draws - n) / draws:.1f} % rejected by the oracle)"
        )
    else:
        click.echo(
            f"{stage}: {n} samples, {n_valid} valid ({100 * (n - n_valid) / n:.1f} % infracting)"
        )
    if out:
        torch.save(
            {
                "x": split.x,
                "cond": split.cond,
                "valid": valid,
                "draws": draws,
                "stage": stage,
            },
            out,
        )
        click.echo(f"wrote {out}")
