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
half-written checkpoint, state or plot under the real name (the two append-only logs may end
in a cut line: it is skipped when read, and the next record starts on a new line);
checkpoints load with ``weights_only=True`` and a corrupt one is reported, not used.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def atomic_path(path):
    """A temporary name (with ``path``'s suffix, so writers that infer the format from it,
    such as ``savefig``, still do) that becomes ``path`` when the block finishes without
    an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _append_line(path: Path, line: str) -> None:
    """Append one line; if a killed run left the file without its final newline (a cut
    line), start on a new line so that this record stays readable."""
    with open(path, "ab") as fh:
        if fh.tell() > 0:
            with open(path, "rb") as tail:
                tail.seek(-1, os.SEEK_END)
                if tail.read(1) != b"\n":
                    fh.write(b"\n")
        fh.write((line + "\n").encode())
        fh.flush()


def versions() -> dict:
    import genneg

    return {
        "genneg": genneg.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }


class RunDir:
    """Files of one run."""

    def __init__(self, path, *, quiet: bool = False, write: bool = True):
        self.path = Path(path).expanduser()
        self.quiet = quiet
        #: False on the ranks other than 0 of a distributed run: they write nothing.
        self.write = write
        if write:
            (self.path / "ckpt").mkdir(parents=True, exist_ok=True)
            (self.path / "plots").mkdir(exist_ok=True)

    # --- log and metrics ---
    def log(self, message: str) -> None:
        if not self.write:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        _append_line(self.path / "log.txt", line)
        if not self.quiet:
            tqdm.write(line)

    def metric(self, event: str, **fields) -> None:
        if not self.write:
            return
        record = {"event": event, "time": time.time(), **fields}
        _append_line(self.path / "metrics.jsonl", json.dumps(record))

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
        if not self.write:
            return
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

        if not self.write:
            return
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
