"""Synthetic labelled datasets (Algorithm 1's inner loop) and the class prior alpha."""

from __future__ import annotations

import attrs
import torch
from tqdm.auto import tqdm

from genneg.components import DataSplit, validate_oracle_result


class NoNegativesError(RuntimeError):
    """The model made too few infracting (or too few valid) samples within the budget."""


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


def label_batch(oracle, name: str, batch: DataSplit):
    """Label a batch; non-finite samples are never shown to the oracle: they are returned as
    invalid in a separate mask. Oracles are CPU programs: the batch is moved to the CPU first.
    Returns ``(finite_mask, finite_rows, result_for_finite_rows)``."""
    batch = batch.to("cpu")
    finite = torch.isfinite(batch.x.reshape(len(batch), -1)).all(dim=1)
    part = batch.index(finite.nonzero().squeeze(1)) if not finite.all() else batch
    result = oracle.label(part.x, part.cond) if len(part) else None
    if result is not None:
        validate_oracle_result(result, len(part), oracle.categories, name)
    return finite, part, result


@attrs.frozen(kw_only=True)
class SynthResult:
    positives: LabelledSet
    negatives: LabelledSet
    natural: LabelledSet | None
    n_positive: int
    n_negative: int
    n_nonfinite: int

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


def _cat(sets: list[LabelledSet]) -> LabelledSet:
    data = DataSplit(
        x=torch.cat([s.data.x for s in sets]),
        cond={k: torch.cat([s.data.cond[k] for s in sets]) for k in sets[0].data.cond},
    )
    labels = torch.cat([s.labels for s in sets])
    els = None if sets[0].element_labels is None else torch.cat([s.element_labels for s in sets])
    return LabelledSet(data=data, labels=labels, element_labels=els)


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
) -> SynthResult:
    """Sample and label until ``cfg.n_per_class`` positives and negatives exist or
    ``cfg.max_samples`` were drawn; keep N of each (and the first 2N drawn if
    ``keep_natural``, for the ``imbalanced`` ablation)."""
    n = cfg.n_per_class
    pos, neg, nat = [], [], []
    k_pos = k_neg = k_nat = 0
    n_pos = n_neg = n_bad = 0
    bar = tqdm(total=cfg.max_samples, desc="synthetic samples", disable=not progress, leave=False)
    while n_pos + n_neg + n_bad < cfg.max_samples and (k_pos < n or k_neg < n):
        b = min(model_sampler.batch_size, cfg.max_samples - (n_pos + n_neg + n_bad))
        batch = model_sampler.sample(denoiser, b, generator)
        finite, part, result = label_batch(oracle, oracle_name, batch)
        n_bad += int((~finite).sum())
        bar.update(b)
        if result is None:
            continue
        labelled = LabelledSet(data=part, labels=result.valid, element_labels=result.element_valid)
        is_pos = result.valid
        n_pos += int(is_pos.sum())
        n_neg += int((~is_pos).sum())
        take_pos = is_pos.nonzero().squeeze(1)[: n - k_pos]
        take_neg = (~is_pos).nonzero().squeeze(1)[: n - k_neg]
        if len(take_pos):
            pos.append(labelled.index(take_pos))
            k_pos += len(take_pos)
        if len(take_neg):
            neg.append(labelled.index(take_neg))
            k_neg += len(take_neg)
        if keep_natural and k_nat < 2 * n:
            take = torch.arange(min(len(labelled), 2 * n - k_nat))
            nat.append(labelled.index(take))
            k_nat += len(take)
        bar.set_postfix(pos=n_pos, neg=n_neg)
    bar.close()
    if n_bad and log is not None:
        log(
            f"warning: {n_bad} of {n_pos + n_neg + n_bad} samples were not finite (NaN/inf); "
            "they were excluded from labelling and from alpha"
        )
    drawn = n_pos + n_neg + n_bad
    if k_neg < cfg.min_per_class or k_pos < cfg.min_per_class:
        which = "infracting" if k_neg < cfg.min_per_class else "valid"
        what = "(almost) no infractions" if which == "infracting" else "almost no valid samples"
        raise NoNegativesError(
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
        positives=_cat(pos),
        negatives=_cat(neg),
        natural=_cat(nat) if nat else None,
        n_positive=n_pos,
        n_negative=n_neg,
        n_nonfinite=n_bad,
    )
