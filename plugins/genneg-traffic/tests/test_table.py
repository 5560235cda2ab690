"""The Table 1 command reads runs through genneg's RunDir: a run killed mid-write (its
``metrics.jsonl`` ending in a cut line) still gives its finished rows; bad rows are errors
before anything runs; a row in a worker process runs under the thread governor."""

import json
import os

import pytest
from genneg_traffic import table
from genneg_traffic.table import format_table, run_table

from genneg import threads


def _eval(stage, infraction, elbo):
    return {
        "event": "eval",
        "time": 0.0,
        "stage": stage,
        "infraction": infraction,
        "infraction_se": 1.0,
        "elbo": elbo,
        "elbo_se": 0.1,
        "categories": {"collision": {"rate": 10.0, "se": 0.5}, "offroad": {"rate": 5.0, "se": 0.2}},
    }


def test_a_cut_metrics_line_does_not_break_the_table(tmp_path):
    run = tmp_path / "baseline"
    run.mkdir()
    (run / "state.json").write_text(json.dumps({"done": ["baseline"]}))
    lines = [json.dumps(_eval("baseline", 30.0, -6.5)), '{"event": "eval", "stage": "ite']
    (run / "metrics.jsonl").write_text("\n".join(lines))  # killed while writing
    table = format_table(tmp_path)
    assert "| baseline DM | 10.00 ± 0.50 | 5.00 ± 0.20 | 30.00 ± 1.00 | -6.500 ± 0.100 |" in table
    assert len(table.splitlines()) == 3  # header, rule, the one finished row


def test_an_unknown_row_is_an_error_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown Table 1 row 'agnet'"):
        run_table("traffic", str(tmp_path), rows=["agent", "agnet"], log=lambda *a: None)
    assert not (tmp_path / "baseline").exists()


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 or threads.cpu_seconds() is None,
    reason="the governor needs 2 cores and /proc/stat",
)
def test_a_worker_row_runs_under_the_thread_governor(tmp_path, monkeypatch):
    """A row in a ``--jobs`` worker process adapts its threads to the other rows' load, as a
    ``genneg`` command does (a spawned worker does not inherit the parent's setting)."""
    monkeypatch.setattr(threads, "_governor", None)  # a fresh worker process's state
    seen = []
    monkeypatch.setattr(
        table, "_run_once", lambda cfg, path, resume, progress, log: seen.append(threads.governor())
    )
    table._run_in_worker(None, tmp_path / "agent", False)
    assert len(seen) == 1 and isinstance(seen[0], threads.ThreadGovernor)
