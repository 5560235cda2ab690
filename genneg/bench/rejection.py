"""Rejection sampling against Gen-neG (paper Sec. 1).

A model whose samples infract with probability ``epsilon`` returns at least one valid sample
among ``N`` parallel draws with probability ``1 - epsilon**N``; asking for ``1 - delta`` without
looping takes ``N = ceil(log delta / log epsilon)`` draws. Rejecting until one is valid takes
``1 / (1 - epsilon)`` draws on average, so a valid sample costs the sample's cost over
``1 - epsilon``.
"""

from __future__ import annotations

import math

DELTAS = (1e-3, 1e-6, 1e-9)


def parallel_samples(epsilon: float, delta: float) -> float:
    """Parallel draws needed for at least one valid sample with probability ``1 - delta``.

    ``epsilon = 0`` needs one draw; ``epsilon = 1`` can never succeed (``math.inf``).
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    if epsilon == 0.0:
        return 1
    if epsilon == 1.0:
        return math.inf
    ratio = math.log(delta) / math.log(epsilon)
    # log(1e-3) / log(0.1) is 3.0000000000000004 in floating point: forgive rounding error.
    return max(1, math.ceil(ratio * (1.0 - 1e-12)))


def expected_draws(epsilon: float) -> float:
    """Mean number of draws of a rejection loop until one is valid: ``1 / (1 - epsilon)``."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    return math.inf if epsilon == 1.0 else 1.0 / (1.0 - epsilon)


def compare(stages: list[dict], deltas=DELTAS) -> list[dict]:
    """One row per model: its infraction rate and what a valid sample costs with rejection.

    Each ``stages`` entry has ``model`` (a label), ``infraction`` (%), and optionally
    ``nfe_per_sample`` (network calls per sample), ``seconds_per_sample`` (sampling),
    ``oracle_seconds_per_sample`` and ``flops_per_sample``.
    """
    rows = []
    for st in stages:
        eps = st["infraction"] / 100.0
        draws = expected_draws(eps)
        row = {
            "model": st["model"],
            "epsilon": eps,
            "draws_per_valid": draws,
            "parallel": {f"{d:g}": parallel_samples(eps, d) for d in deltas},
        }
        for key in ("nfe_per_sample", "seconds_per_sample", "flops_per_sample"):
            if st.get(key) is not None:
                per_valid = st[key] + (
                    st.get("oracle_seconds_per_sample", 0.0) if key == "seconds_per_sample" else 0
                )
                row[key.replace("_per_sample", "_per_valid")] = per_valid * draws
        rows.append(row)
    return rows
