"""The README's main job: the `checkerboard` preset end to end, through the installed plugin."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_halves_the_infraction_rate_with_comparable_elbo(tmp_path):
    env = dict(os.environ)
    env.pop("GENNEG_DISABLE_PLUGIN_AUTOLOAD", None)
    # The threads a user gets: genneg's default, the cores other processes leave free
    # (genneg/threads.py), so a busy CI machine does not stall it (torch's fixed two threads
    # took the baseline's training from 27 s alone to 811 s beside another job).
    env.pop("OMP_NUM_THREADS", None)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "genneg", "run", "checkerboard", "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,  # a guard against a hang, not a speed test
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| baseline |" in proc.stdout  # the table is printed
    rows = {r["stage"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"baseline", "iter1", "iter2", "iter3", "distill"}
    base, last = rows["baseline"], rows["iter3"]
    assert last["infraction"] <= 0.5 * base["infraction"]
    assert abs(last["elbo"] - base["elbo"]) < 0.3  # nats/dim: comparable to the baseline
    for stage in rows:
        assert (out / "plots" / f"samples_{stage}.png").exists()
    assert (out / "plots" / "curves.png").exists()
    # issue 11 (measured 1.75 / 0.69 / 0.42 %, paired ELBO +0.029 +- 0.010 / +0.007 +- 0.013 /
    # -0.015 +- 0.015 nats/dim over the baseline; distilled 0.51 %, -0.015 +- 0.014): no
    # iteration costs likelihood beyond its paired standard error (2 s.e. here, a guard, not
    # the measurement), the last reaches ~0.5 %, the student stays near its teacher
    assert last["infraction"] < 0.75
    for stage in ("iter1", "iter2", "iter3", "distill"):
        assert rows[stage]["elbo_diff"] > -2 * rows[stage]["elbo_diff_se"], stage
    assert rows["distill"]["infraction"] < 1.5 * last["infraction"] + 0.1
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    diags = [json.loads(line) for line in metrics if '"event": "classifier"' in line]
    assert [d["stage"] for d in diags] == ["iter1", "iter2", "iter3"]
    assert (out / "plots" / "classifiers.png").exists()
