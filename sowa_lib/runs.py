"""Results store: one atomic JSON file per run, read back as one long DataFrame (DESIGN.md,
"Results and provenance").

A run is one (profile, dataset, category, method, variant, setting, shots, seed). Its file is
written to a unique temporary name and renamed into place, so an interrupted sweep never leaves a
half-written run, two workers never clobber each other, and a rerun skips what exists.
"""
from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

SETTINGS = ("zero_shot", "few_shot", "multi_class", "one_class")


@dataclass(frozen=True)
class RunSpec:
    """What one run computes; its fields are the store's key."""

    profile: str
    dataset: str
    category: str
    method: str
    setting: str
    shots: int = 0
    seed: int = 0
    variant: str = "default"

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"setting {self.setting!r} not in {SETTINGS}")
        for name in ("dataset", "category", "method", "variant"):
            value = getattr(self, name)
            if not value or "/" in value or value.startswith("."):
                raise ValueError(f"{name} {value!r} cannot be used in a file path")

    def relpath(self) -> Path:
        return Path(self.method, self.variant, self.setting, self.dataset, self.category, f"k{self.shots}_seed{self.seed}.json")


def run_path(results_dir: Path, spec: RunSpec) -> Path:
    return Path(results_dir) / "runs" / spec.relpath()


def is_done(results_dir: Path, spec: RunSpec) -> bool:
    return run_path(results_dir, spec).is_file()


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=1)
def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def provenance(weights: str = "", device: str = "cpu") -> dict[str, str]:
    """Where and with what a run was computed: commit, package versions, weights id, host, device."""
    import torch

    gpu = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else ""
    return {
        "commit": _git_commit(),
        "sowa_lib": _package_version("sowa_lib"),
        "torch": torch.__version__,
        "open_clip": _package_version("open_clip_torch"),
        "timm": _package_version("timm"),
        "python": platform.python_version(),
        "weights": weights,
        "host": socket.gethostname(),
        "device": device,
        "gpu": gpu,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _finite_or_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def write_run(results_dir: Path, spec: RunSpec, metrics: dict[str, float], **record: Any) -> Path:
    """Atomically write one run: ``metrics`` (NaN stored as null) plus any JSON-able ``record``
    fields (``reasons``, ``references``, ``provenance``, ``config``, ``seconds`` ...)."""
    path = run_path(results_dir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"spec": asdict(spec), "metrics": {k: _finite_or_none(v) for k, v in metrics.items()}, **record}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_run(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def iter_runs(results_dir: Path) -> Iterable[dict[str, Any]]:
    for path in sorted((Path(results_dir) / "runs").rglob("*.json")):
        yield read_run(path)


RESULT_COLUMNS = [
    "profile", "dataset", "category", "method", "variant", "setting", "shots", "seed",
    "metric", "value", "reason", "commit", "weights", "created",
]


def load_results(results_dir: Path, specs: Iterable[RunSpec] | None = None) -> pd.DataFrame:
    """All runs under ``results_dir`` (or only those of ``specs`` that exist) as one long frame,
    one row per (run, metric). ``value`` is a fraction in [0, 1] (NaN with ``reason`` where undefined).
    """
    if specs is None:
        found = iter_runs(results_dir)
    else:
        found = (read_run(path) for path in (run_path(results_dir, s) for s in specs) if path.is_file())
    rows = []
    for run in found:
        prov = run.get("provenance", {})
        reasons = run.get("reasons", {})
        for metric, value in run["metrics"].items():
            rows.append({
                **run["spec"], "metric": metric, "value": math.nan if value is None else value,
                "reason": reasons.get(metric, ""), "commit": prov.get("commit", ""),
                "weights": prov.get("weights", ""), "created": prov.get("created", ""),
            })
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)
