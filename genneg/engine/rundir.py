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
import io
import json
import os
import pickletools
import platform
import re
import time
import zipfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from genneg import config as config_mod
from genneg.errors import CheckpointError, RunError

#: Bookkeeping keys of a metrics line, not part of the event's record.
_EVENT_KEYS = ("event", "time")


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
        """The records of ``metrics.jsonl`` (of one ``event`` kind if given), in order; a line
        cut by a killed run is skipped."""
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

    def read_evals(self) -> dict[str, dict]:
        """The evaluation row of each finished stage, by stage, as the run computed it (the
        line's bookkeeping keys ``event`` and ``time`` left out)."""
        done = set(self.state()["done"])
        rows = {}
        for rec in self.read_metrics("eval"):
            if rec.get("stage") in done:
                rows[rec["stage"]] = {k: v for k, v in rec.items() if k not in _EVENT_KEYS}
        return rows

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
        """Write ``ckpt/<stage>.pt``: the modules' state dicts, the config, versions, the RNG
        state and ``extra`` (plain data), atomically."""
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
        if "weights_only" in str(exc) or "GLOBAL" in str(exc):
            names = _foreign_globals(path)
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = names[0] if names else found.group(1) if found else "Python objects"
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled Python objects, not only tensors "
                f"(loading it would import {what}); genneg never runs code from a checkpoint"
            ) from None
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {text}") from None
    if not isinstance(payload, dict) or "modules" not in payload:
        raise CheckpointError(f"{path} is not a genneg checkpoint (no 'modules' entry)")
    return payload


def _foreign_globals(path: Path) -> list[str]:
    """The globals (``module.name``) other than torch's and ``collections``' that the pickle
    of a ``torch.save`` archive would import, read with :mod:`pickletools` (nothing runs)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            data = archive.read(name)
    except (zipfile.BadZipFile, StopIteration, OSError, KeyError):
        return []
    found, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
    except Exception:  # a damaged pickle: report what was read before the damage
        pass
    return [g for g in found if g.split(".")[0] not in ("torch", "collections", "_codecs")]


def load_modules(path, modules: dict) -> dict:
    """Load the state dicts of checkpoint ``path`` into ``modules`` (key -> module); a
    missing key or weights that do not fit raise :class:`CheckpointError` naming both."""
    payload = load_checkpoint(path)
    for key, module in modules.items():
        if key not in payload["modules"]:
            keys = ", ".join(sorted(payload["modules"])) or "none"
            raise CheckpointError(f"{path} has no {key!r} weights (it has: {keys})")
        try:
            module.load_state_dict(payload["modules"][key])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: {key!r} weights do not fit the model: {exc}") from None
    return payload


def prepare_rundir(cfg, out, *, resume: bool, quiet: bool) -> RunDir:
    """The run directory ``out`` for ``cfg``: a new one, or with ``resume`` an existing one
    whose ``config.toml`` matches (a mismatch names the differing keys)."""
    rd = RunDir(out, quiet=quiet)
    toml_path = rd.path / "config.toml"
    text = config_mod.dumps_toml(cfg)
    if toml_path.exists():
        if not resume and rd.state()["done"]:
            raise RunError(
                f"{rd.path} already holds a run; pass --resume to continue it or "
                "choose another --out"
            )
        if resume and toml_path.read_text() != text:
            old = config_mod.to_dict(config_mod.from_dict(config_mod.load_toml(toml_path)))
            diff = _diff_keys(old, config_mod.to_dict(cfg))
            if diff:  # none: a key added since, at its default (e.g. classifier.element_loss)
                raise RunError(f"cannot resume {rd.path}: its config differs in {', '.join(diff)}")
    atomic_write_text(toml_path, text)
    return rd


def _diff_keys(a, b, prefix=""):
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys
