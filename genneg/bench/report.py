"""Benchmark results: records added by cases, written as JSON and a Markdown table."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import torch


class Report:
    """What the benchmark cases measured. A case calls ``report.add(name, **values)``; the
    values are numbers, strings or small dicts (JSON-able)."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.meta: dict = machine_info()
        self.plugin = "genneg"
        self.errors: list[dict] = []

    def add(self, name: str, **values) -> dict:
        """Record one measurement ``name`` (e.g. ``"oracle"``) under the current plugin."""
        rec = {"plugin": self.plugin, "case": name, **values}
        self.records.append(rec)
        return rec

    def error(self, name: str, exc: BaseException) -> None:
        self.errors.append(
            {"plugin": self.plugin, "case": name, "error": f"{type(exc).__name__}: {exc}"}
        )

    def find(self, case: str, **match) -> list[dict]:
        return [
            r
            for r in self.records
            if r["case"] == case and all(r.get(k) == v for k, v in match.items())
        ]

    def to_json(self) -> dict:
        return {"meta": self.meta, "records": self.records, "errors": self.errors}

    def write(self, out_dir) -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        js, md = out / "bench.json", out / "bench.md"
        js.write_text(json.dumps(_jsonable(self.to_json()), indent=1) + "\n")
        from genneg.bench.tables import markdown

        md.write_text(markdown(self) + "\n")
        return js, md


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else "inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    import genneg

    info["genneg"] = genneg.__version__
    return info
