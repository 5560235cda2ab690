"""Oracle labelling: inline, or in a pool of CPU worker processes for slow oracles.

Non-finite samples are never shown to an oracle; an oracle that raises or returns a malformed
result is reported as :class:`OracleError`, naming it. A pool (``workers > 0``) splits each
batch into one contiguous chunk per worker and concatenates the chunks' labels in order, so
it gives the labels of one inline call for any oracle that labels samples independently of
the other samples in its batch (the oracle contract: ``label`` is vectorised over the batch).
"""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import attrs
import torch

from genneg.components import DataSplit, OracleResult, validate_oracle_result
from genneg.errors import OracleError

__all__ = ["Labelled", "OracleError", "OracleLabeller", "label_batch"]


@attrs.frozen(kw_only=True)
class Labelled:
    """A labelled batch of samples.

    :ivar finite: bool ``[B]`` over every row drawn: False where the sample had NaN/inf
        (never shown to the oracle, counted as an infraction of its own kind).
    :ivar samples: the finite rows, what the oracle labelled.
    :ivar result: the oracle's :class:`OracleResult` for ``samples``; ``None`` when no row
        was finite.
    """

    finite: torch.Tensor
    samples: DataSplit
    result: OracleResult | None

    @property
    def valid(self) -> torch.Tensor:
        """bool ``[B]`` over every row drawn: True where the sample is finite and valid."""
        valid = torch.zeros(len(self.finite), dtype=torch.bool)
        if self.result is not None:
            valid[self.finite.nonzero().squeeze(1)] = self.result.valid.cpu()
        return valid

    def counts(self) -> tuple[int, int, int]:
        """``(valid, infracting, non-finite)`` row counts."""
        n_bad = int((~self.finite).sum())
        if self.result is None:
            return 0, 0, n_bad
        n_pos = int(self.result.valid.sum())
        return n_pos, len(self.result.valid) - n_pos, n_bad


def _call_oracle(oracle, name: str, part: DataSplit):
    try:
        return oracle.label(part.x, part.cond)
    except Exception as exc:
        raise OracleError(
            f"oracle {name!r} raised on a batch of {len(part)} samples: {type(exc).__name__}: {exc}"
        ) from exc


def _validate(result, n: int, oracle, name: str):
    try:
        validate_oracle_result(result, n, oracle.categories, name)
    except ValueError as exc:
        raise OracleError(str(exc)) from None
    return result


def _split_finite(batch: DataSplit):
    batch = batch.to("cpu")
    finite = torch.isfinite(batch.x.reshape(len(batch), -1)).all(dim=1)
    part = batch.index(finite.nonzero().squeeze(1)) if not finite.all() else batch
    return finite, part


def label_batch(oracle, name: str, batch: DataSplit) -> Labelled:
    """Label a batch; non-finite samples are never shown to the oracle (see :class:`Labelled`).
    Oracles are CPU programs: the batch is moved to the CPU first. An oracle that raises or
    returns a malformed result is reported as :class:`OracleError`, naming it."""
    finite, part = _split_finite(batch)
    result = _call_oracle(oracle, name, part) if len(part) else None
    if result is not None:
        _validate(result, len(part), oracle, name)
    return Labelled(finite=finite, samples=part, result=result)


_WORKER_ORACLE = None


def _init_worker(blob: bytes) -> None:
    global _WORKER_ORACLE
    torch.set_num_threads(1)  # one core per worker; the pool is the parallelism
    _WORKER_ORACLE = pickle.loads(blob)


def _label_in_worker(x, cond):
    return _WORKER_ORACLE.label(x, cond)


class OracleLabeller:
    """Labels batches with ``oracle``: inline (``workers=0``), or in ``workers`` spawned CPU
    processes, each holding a copy of the oracle. :meth:`submit` returns at once with a
    pool, so the caller can sample the next batch while this one is labelled."""

    def __init__(self, oracle, name: str, workers: int = 0):
        if workers < 0:
            raise ValueError(f"oracle workers must be >= 0, got {workers}")
        self.oracle, self.name, self.workers = oracle, name, workers
        self.pool = None
        if workers:
            try:
                blob = pickle.dumps(oracle)
            except Exception as exc:
                raise OracleError(
                    f"oracle {name!r} cannot be sent to worker processes ({exc}); "
                    "label inline (--oracle-workers 0)"
                ) from None
            self.pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(blob,),
            )

    @property
    def overlaps(self) -> bool:
        """True when labelling runs beside the caller (worth sampling ahead)."""
        return self.pool is not None

    def submit(self, batch: DataSplit):
        """Start labelling ``batch``; returns a handle for :meth:`result`."""
        finite, part = _split_finite(batch)
        if self.pool is None or not len(part):
            return label_batch(self.oracle, self.name, batch)
        bounds = torch.linspace(0, len(part), self.workers + 1).round().long().tolist()
        futures = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi > lo:
                chunk = part.index(torch.arange(lo, hi))
                futures.append((hi - lo, self.pool.submit(_label_in_worker, chunk.x, chunk.cond)))
        return finite, part, futures

    def result(self, handle) -> Labelled | None:
        """The :class:`Labelled` batch of a submitted handle, as :func:`label_batch` returns
        it."""
        if handle is None or isinstance(handle, Labelled):
            return handle
        finite, part, pending = handle
        results = []
        for n, future in pending:
            try:
                res = future.result()
            except Exception as exc:
                raise OracleError(
                    f"oracle {self.name!r} raised on a batch of {n} samples (in a worker "
                    f"process): {type(exc).__name__}: {exc}"
                ) from exc
            results.append(_validate(res, n, self.oracle, self.name))
        return Labelled(finite=finite, samples=part, result=_concat(results, self.name))

    def label(self, batch: DataSplit) -> Labelled:
        """Label ``batch`` now (chunks in parallel with a pool)."""
        return self.result(self.submit(batch))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _concat(results: list[OracleResult], name: str) -> OracleResult:
    if len(results) == 1:
        return results[0]
    cats = {}
    for key in dict.fromkeys(k for r in results for k in r.categories):
        cats[key] = torch.cat([r.categories.get(key, torch.zeros_like(r.valid)) for r in results])
    els = [r.element_valid for r in results]
    if any(e is None for e in els) and not all(e is None for e in els):
        raise OracleError(f"oracle {name!r} returned element_valid for some batches only")
    return OracleResult(
        valid=torch.cat([r.valid for r in results]),
        categories=cats,
        element_valid=None if els[0] is None else torch.cat(els),
    )
