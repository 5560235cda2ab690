"""The run directory: config, log, metrics, checkpoints and the resume state.

Layout::

    RUN/config.toml       the resolved config (a resumed run must match it)
    RUN/log.txt           human-readable log
    RUN/metrics.jsonl     one flushed JSON line per event (training losses, synth sets, evals)
    RUN/state.json        finished stages, written atomically after each stage
    RUN/ckpt/<stage>.pt   checkpoints: state_dicts + config + versions + RNG state
    RUN/plots/*.png       per-stage sample plots and the curves across stages
    RUN/results.md        the final table

Every file is written to a temporary name and renamed, so a killed run never leaves a
half-written checkpoint under the real name; checkpoints load with ``weights_only=True`` and a
corrupt one is reported, not used.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or unsafe to load."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def versions() -> dict:
    import genneg

    return {
        "genneg": genneg.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }


class RunDir:
    """Files of one run."""

    def __init__(self, path, *, quiet: bool = False):
        self.path = Path(path).expanduser()
        self.quiet = quiet
        (self.path / "ckpt").mkdir(parents=True, exist_ok=True)
        (self.path / "plots").mkdir(exist_ok=True)

    # --- log and metrics ---
    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        with open(self.path / "log.txt", "a") as fh:
            fh.write(line + "\n")
        if not self.quiet:
            tqdm.write(line)

    def metric(self, event: str, **fields) -> None:
        record = {"event": event, "time": time.time(), **fields}
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def read_metrics(self, event: str | None = None) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if event is None or rec.get("event") == event:
                out.append(rec)
        return out

    # --- state ---
    def state(self) -> dict:
        path = self.path / "state.json"
        if not path.exists():
            return {"done": []}
        return json.loads(path.read_text())

    def mark_done(self, stage: str, **extra) -> None:
        state = self.state()
        if stage not in state["done"]:
            state["done"].append(stage)
        state.update(extra)
        atomic_write_text(self.path / "state.json", json.dumps(state, indent=1))

    # --- checkpoints ---
    def ckpt_path(self, stage: str) -> Path:
        return self.path / "ckpt" / f"{stage}.pt"

    def save(self, stage: str, modules: dict, config_toml: str, extra: dict | None = None):
        import io

        payload = {
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "config": config_toml,
            "versions": versions(),
            "rng": torch.get_rng_state(),
            "extra": extra or {},
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(self.ckpt_path(stage), buf.getvalue())


def load_checkpoint(path) -> dict:
    """Load a genneg checkpoint with ``weights_only=True``; a file carrying pickled code, a
    truncated or corrupt file, or one of another format raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Unsupported global" in str(exc) or "weights_only" in str(exc):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            text = f"it would import {found.group(1)}" if found else text
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled Python objects, not only "
                f"tensors ({text})"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {text}") from None
    if not isinstance(payload, dict) or "modules" not in payload:
        raise CheckpointError(f"{path} is not a genneg checkpoint (no 'modules' entry)")
    return payload
