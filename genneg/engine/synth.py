"""Synthetic labelled datasets (Algorithm 1's inner loop) and the class prior alpha."""

from __future__ import annotations

import time

import attrs
import torch
from tqdm.auto import tqdm

from genneg import distributed
from genneg.components import DataSplit
from genneg.engine.labelling import OracleLabeller
from genneg.errors import ClassTooRareError

__all__ = ["ClassTooRareError", "LabelledSet", "SynthResult", "draw_labelled"]


@attrs.frozen(kw_only=True)
class LabelledSet:
    """Samples with scene labels (and per-element labels where the oracle gives them)."""

    data: DataSplit
    labels: torch.Tensor
    element_labels: torch.Tensor | None

    def __len__(self):
        return len(self.labels)

    def to(self, device):
        el = None if self.element_labels is None else self.element_labels.to(device)
        return LabelledSet(
            data=self.data.to(device), labels=self.labels.to(device), element_labels=el
        )

    def index(self, idx):
        el = None if self.element_labels is None else self.element_labels[idx]
        return LabelledSet(data=self.data.index(idx), labels=self.labels[idx], element_labels=el)

    @classmethod
    def cat(cls, sets: list[LabelledSet]) -> LabelledSet:
        """The rows of ``sets``, in order."""
        data = DataSplit.cat([s.data for s in sets])
        labels = torch.cat([s.labels for s in sets])
        els = sets[0].element_labels
        els = None if els is None else torch.cat([s.element_labels for s in sets])
        return cls(data=data, labels=labels, element_labels=els)


@attrs.frozen(kw_only=True)
class SynthResult:
    positives: LabelledSet
    negatives: LabelledSet
    natural: LabelledSet | None
    n_positive: int
    n_negative: int
    n_nonfinite: int
    sampling_seconds: float = 0.0  # wall time in the model's sampler
    labelling_seconds: float = 0.0  # wall time labelling, or waiting for the pool's labels

    @property
    def n_drawn(self) -> int:
        return self.n_positive + self.n_negative + self.n_nonfinite

    @property
    def alpha(self) -> float:
        """alpha = |D+| / (|D+| + |D-|) over all drawn (finite) samples (Algorithm 1)."""
        return self.n_positive / max(self.n_positive + self.n_negative, 1)

    def summary(self) -> dict:
        return {
            "n_drawn": self.n_drawn,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "n_nonfinite": self.n_nonfinite,
            "alpha": self.alpha,
            "kept_positive": len(self.positives),
            "kept_negative": len(self.negatives),
        }

    def timings(self) -> dict:
        """Where the wall time went: the model's sampler and the oracle (inline labelling, or
        waiting for the pool's labels)."""
        return {
            "sampling_seconds": self.sampling_seconds,
            "labelling_seconds": self.labelling_seconds,
        }


def draw_labelled(
    model_sampler,
    denoiser,
    oracle,
    oracle_name,
    cfg,
    *,
    keep_natural: bool,
    generator,
    progress=True,
    log=None,
    labeller=None,
) -> SynthResult:
    """Sample and label until ``cfg.n_per_class`` positives and negatives exist or
    ``cfg.max_samples`` were drawn; keep N negatives and N positives (up to
    ``cfg.keep_positive`` positives if that is more), and the first 2N drawn if
    ``keep_natural``, for the ``imbalanced`` ablation.

    ``labeller`` (an :class:`OracleLabeller`) may label in worker processes; it then labels
    one batch while the next is sampled (a batch drawn but not needed is discarded
    uncounted, so the result is the one of inline labelling).

    Under torch.distributed each round draws ``world_size * batch_size`` samples (at most
    the remaining budget), each rank its share with its own generator
    (:func:`genneg.distributed.rank_generator`); the counts are all-reduced after every round,
    so alpha and the stopping rule see every rank's samples, and the kept sets are gathered
    in (round, rank) order and cut to N, so every rank returns the same set, without
    duplicates. With one process this is exactly the sequential loop."""
    n = cfg.n_per_class
    n_keep = max(n, cfg.keep_positive)  # positives kept (more than N: drawn anyway)
    world = distributed.world_size()
    gen = distributed.rank_generator(generator) if world > 1 else generator
    own = labeller is None
    labeller = labeller or OracleLabeller(oracle, oracle_name)
    pos, neg, nat = [], [], []  # (round, LabelledSet) kept on this rank
    k_pos = k_neg = k_nat = 0  # kept on this rank
    n_pos = n_neg = n_bad = 0  # drawn by all ranks
    drawn = 0
    bar = tqdm(
        total=cfg.max_samples,
        desc="synthetic samples",
        disable=not (progress and distributed.is_main()),
        leave=False,
    )

    def round_size(drawn_before):
        return min(world * model_sampler.batch_size, cfg.max_samples - drawn_before)

    clock = {"sampling": 0.0, "labelling": 0.0}  # where the time goes

    def timed(key, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            clock[key] += time.perf_counter() - t0

    def start(drawn_before):
        lo, hi = distributed.share(round_size(drawn_before))
        if hi == lo:
            return None
        samples = timed("sampling", model_sampler.sample, denoiser, hi - lo, gen)
        return timed("labelling", labeller.submit, samples)

    try:
        rnd = 0
        pending = _guard(start, 0)
        while True:
            b = round_size(drawn)
            nxt = None
            if labeller.overlaps and drawn + b < cfg.max_samples:
                nxt = _guard(start, drawn + b)  # sampled while the pool labels
            got = (
                _guard(timed, "labelling", labeller.result, pending.value)
                if pending.ok
                else pending
            )
            failed = not (got.ok and pending.ok and (nxt is None or nxt.ok))
            local = (0, 0, 0) if failed or got.value is None else got.value.counts()
            counts = distributed.all_reduce_sum([*local, int(failed)])
            if counts[3]:
                for box in (pending, got, nxt):
                    if box is not None and not box.ok:
                        raise box.value
                raise RuntimeError("labelling failed on another rank (see its error)")
            before = (min(n_keep, n_pos), min(n, n_neg), min(2 * n, n_pos + n_neg))
            n_pos, n_neg, n_bad = n_pos + counts[0], n_neg + counts[1], n_bad + counts[2]
            drawn += b
            bar.update(b)
            if got.value is not None and got.value.result is not None:
                result = got.value.result
                labelled = LabelledSet(
                    data=got.value.samples, labels=result.valid, element_labels=result.element_valid
                )
                is_pos = result.valid
                take_pos = is_pos.nonzero().squeeze(1)[: min(n_keep - k_pos, n_keep - before[0])]
                take_neg = (~is_pos).nonzero().squeeze(1)[: min(n - k_neg, n - before[1])]
                if len(take_pos):
                    pos.append((rnd, labelled.index(take_pos)))
                    k_pos += len(take_pos)
                if len(take_neg):
                    neg.append((rnd, labelled.index(take_neg)))
                    k_neg += len(take_neg)
                room = min(2 * n - k_nat, 2 * n - before[2])
                if keep_natural and room > 0:
                    take = torch.arange(min(len(labelled), room))
                    nat.append((rnd, labelled.index(take)))
                    k_nat += len(take)
            bar.set_postfix(pos=n_pos, neg=n_neg)
            if not (drawn < cfg.max_samples and (n_pos < n or n_neg < n)):
                break
            rnd += 1
            pending = nxt if nxt is not None else _guard(start, drawn)
    finally:
        bar.close()
        if own:
            labeller.close()
    if n_bad and log is not None:
        log(
            f"warning: {n_bad} of {n_pos + n_neg + n_bad} samples were not finite (NaN/inf); "
            "they were excluded from labelling and from alpha"
        )
    k_pos, k_neg = min(n_keep, n_pos), min(n, n_neg)  # what the gathered sets hold
    if k_neg < cfg.min_per_class or k_pos < cfg.min_per_class:
        which = "infracting" if k_neg < cfg.min_per_class else "valid"
        what = "(almost) no infractions" if which == "infracting" else "almost no valid samples"
        raise ClassTooRareError(
            f"only {min(k_neg, k_pos)} {which} samples in {drawn} drawn (budget "
            f"synth.max_samples={cfg.max_samples}, need synth.min_per_class={cfg.min_per_class}):"
            f" the model has {what} left to learn from"
        )
    if (k_neg < n or k_pos < n) and log is not None:
        log(
            f"sample budget reached: kept {k_pos} valid and {k_neg} infracting samples "
            f"(asked for {n} each)"
        )
    return SynthResult(
        positives=_gather(pos, n_keep),
        negatives=_gather(neg, n),
        natural=_gather(nat, 2 * n) if keep_natural else None,
        n_positive=n_pos,
        n_negative=n_neg,
        n_nonfinite=n_bad,
        sampling_seconds=clock["sampling"],
        labelling_seconds=clock["labelling"],
    )


class _Box:
    """A value or the exception that replaced it (so that every rank reaches the
    all-reduce of a round before any of them raises)."""

    def __init__(self, ok: bool, value):
        self.ok, self.value = ok, value


def _guard(fn, *args) -> _Box:
    if not distributed.is_distributed():
        return _Box(True, fn(*args))  # one process: raise where it happens
    try:
        return _Box(True, fn(*args))
    except Exception as exc:
        return _Box(False, exc)


def _gather(tagged: list, limit: int) -> LabelledSet | None:
    """Every rank's kept rows in (round, rank, draw) order, the first ``limit`` of them."""
    if not distributed.is_distributed():
        return LabelledSet.cat([s for _, s in tagged]) if tagged else None
    if tagged:
        local = LabelledSet.cat([s for _, s in tagged])
        rounds = torch.cat([torch.full((len(s),), r, dtype=torch.int64) for r, s in tagged])
    else:
        local, rounds = None, torch.zeros(0, dtype=torch.int64)
    ref = [s for s in distributed.all_gather_object(_template(local)) if s is not None]
    if not ref:
        return None
    local = local if local is not None else _empty_like(ref[0])
    data = distributed.all_gather_split(local.data)
    labels = distributed.all_gather_tensor(local.labels)
    els = local.element_labels
    els = None if els is None else distributed.all_gather_tensor(els)
    order = torch.sort(distributed.all_gather_tensor(rounds), stable=True).indices[:limit]
    return LabelledSet(data=data, labels=labels, element_labels=els).index(order)


def _template(s: LabelledSet | None):
    if s is None:
        return None
    return {
        "x": (tuple(s.data.x.shape[1:]), s.data.x.dtype),
        "cond": {k: (tuple(v.shape[1:]), v.dtype) for k, v in s.data.cond.items()},
        "el": None if s.element_labels is None else tuple(s.element_labels.shape[1:]),
    }


def _empty_like(t) -> LabelledSet:
    x = torch.zeros((0, *t["x"][0]), dtype=t["x"][1])
    cond = {k: torch.zeros((0, *shape), dtype=dt) for k, (shape, dt) in t["cond"].items()}
    el = None if t["el"] is None else torch.zeros((0, *t["el"]), dtype=torch.bool)
    return LabelledSet(
        data=DataSplit(x=x, cond=cond), labels=torch.zeros(0, dtype=torch.bool), element_labels=el
    )
