"""Results store: one atomic JSON file per run, read back as one long DataFrame (DESIGN.md,
"Results and provenance").

A run is one (profile, dataset, category, method, variant, setting, shots, seed). Its file is
written to a unique temporary name and renamed into place, so an interrupted sweep never leaves a
half-written run, two workers never clobber each other, and a rerun skips what exists. The temporary
file of a writer killed midway is removed by the next sweep (:func:`remove_orphaned_temporaries`).

Each run stores its ``fingerprint`` and the ``fingerprint_parts`` it was computed from
(:mod:`sowa_lib.fingerprint`); :func:`is_done` counts a run as done only when that fingerprint is
the one the plan would compute now, and :func:`set_aside_stale` moves a stale run out of the store's
sight. A stale run kept on the user's request (``reuse_stale``) is marked (:func:`mark_stale`) and
shows as ``stale`` in :func:`load_results`.
"""
from __future__ import annotations

import json
import math
import os
import platform
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch

import sowa_lib
from sowa_lib import fingerprint
from sowa_lib.vocabulary import RUN_SETTINGS


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
        if self.setting not in RUN_SETTINGS:
            raise ValueError(f"setting {self.setting!r} not in {RUN_SETTINGS}")
        for name in ("dataset", "category", "method", "variant"):
            value = getattr(self, name)
            if not value or "/" in value or value.startswith("."):
                raise ValueError(f"{name} {value!r} cannot be used in a file path")

    def relpath(self) -> Path:
        return Path(self.method, self.variant, self.setting, self.dataset, self.category, f"k{self.shots}_seed{self.seed}.json")


def run_path(results_dir: Path, spec: RunSpec) -> Path:
    return Path(results_dir) / "runs" / spec.relpath()


def is_done(results_dir: Path, spec: RunSpec, expected: str | None = None) -> bool:
    """Whether ``spec``'s run is stored, and (given ``expected``) stored with that fingerprint."""
    path = run_path(results_dir, spec)
    if not path.is_file():
        return False
    return expected is None or read_run(path).get("fingerprint") == expected


def stale_keys(results_dir: Path, spec: RunSpec, parts: dict[str, Any]) -> list[str] | None:
    """None when ``spec``'s stored run was computed from ``parts`` (or is not stored); else the
    dotted names of the parts that differ (:func:`sowa_lib.fingerprint.differing_keys`)."""
    path = run_path(results_dir, spec)
    if not path.is_file():
        return None
    run = read_run(path)
    if run.get("fingerprint") == fingerprint.digest(parts):
        return None
    return fingerprint.differing_keys(run.get("fingerprint_parts"), parts)


def set_aside_stale(results_dir: Path, spec: RunSpec) -> Path:
    """Move ``spec``'s stored run out of the store (``<run>.json.stale-<time>``, never read back)."""
    return fingerprint.set_aside(run_path(results_dir, spec))


def mark_stale(results_dir: Path, spec: RunSpec, differs: list[str] | None) -> None:
    """Record in ``spec``'s stored run that it is reused although ``differs`` changed since it was
    computed (``reuse_stale``), or clear that record (``differs=None``: it is current again)."""
    path = run_path(results_dir, spec)
    run = read_run(path)
    if run.get("stale") == differs or (differs is None and "stale" not in run):
        return
    if differs is None:
        run.pop("stale")
    else:
        run["stale"] = differs
    _atomic_write_json(path, run)


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance(weights: str = "", device: str = "cpu") -> dict[str, str]:
    """Where and with what a run was computed: commit and whether the tree was dirty, package versions,
    weights id, host, device."""
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else ""
    return {
        **fingerprint.code_state(),
        "sowa_lib": sowa_lib.__version__,
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


#: A run file is written in milliseconds: a temporary file this old whose writer ran on another host
#: (where this process cannot tell whether it is alive) is an orphan.
ORPHAN_AGE_SECONDS = 3600


def _temporary_prefix(path: Path) -> str:
    """``.<run>@<host>@<pid>@``: who is writing, so that a sweep can tell an orphan from a live write."""
    return f".{path.stem}@{socket.gethostname()}@{os.getpid()}@"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _is_orphan(tmp: Path, now: float) -> bool:
    parts = tmp.name.split("@")
    if len(parts) == 4 and parts[1] == socket.gethostname() and parts[2].isdigit():
        return not _process_alive(int(parts[2]))
    return now - tmp.stat().st_mtime > ORPHAN_AGE_SECONDS


def remove_orphaned_temporaries(results_dir: Path) -> list[Path]:
    """Delete the temporary files of writers that died mid-write (killed, pre-empted, out of memory);
    live writes of other workers are left alone. Returns the removed paths."""
    now, removed = time.time(), []
    for tmp in (Path(results_dir) / "runs").rglob(".*.tmp"):
        try:
            if _is_orphan(tmp, now):
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # renamed or removed meanwhile
            continue
    return removed


def write_run(results_dir: Path, spec: RunSpec, metrics: dict[str, float], *, provenance: dict[str, str], **record: Any) -> Path:
    """Atomically write one run: ``metrics`` (NaN stored as null), its ``provenance`` (see
    :func:`provenance`) and any JSON-able ``record`` fields (``reasons``, ``references``, ``config``,
    ``seconds``, ``aupro_variant``, ``fingerprint_parts`` ...). With ``fingerprint_parts`` the run's
    ``fingerprint`` is stored beside them."""
    path = run_path(results_dir, spec)
    payload = {"spec": asdict(spec), "metrics": {k: _finite_or_none(v) for k, v in metrics.items()}, "provenance": provenance, **record}
    if "fingerprint_parts" in record:
        payload["fingerprint"] = fingerprint.digest(record["fingerprint_parts"])
    _atomic_write_json(path, payload)
    return path


def _atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    """``payload`` to a unique temporary file beside ``path`` (:func:`_temporary_prefix`), then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_run(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def iter_runs(results_dir: Path) -> Iterable[dict[str, Any]]:
    for path in sorted((Path(results_dir) / "runs").rglob("*.json")):
        yield read_run(path)


#: Provenance fields copied into every row of :func:`load_results`.
PROVENANCE_COLUMNS = ["commit", "dirty", "sowa_lib", "torch", "open_clip", "weights", "device", "created"]
RESULT_COLUMNS = [
    "profile", "dataset", "category", "method", "variant", "setting", "shots", "seed",
    "metric", "value", "reason", "aupro_variant", "fingerprint", "stale", *PROVENANCE_COLUMNS,
]


def load_results(results_dir: Path, specs: Iterable[RunSpec] | None = None) -> pd.DataFrame:
    """All runs under ``results_dir`` (or only those of ``specs`` that exist) as one long frame,
    one row per (run, metric). ``value`` is a fraction in [0, 1] (NaN with ``reason`` where undefined);
    ``aupro_variant`` and the :data:`PROVENANCE_COLUMNS` say how and with what it was computed;
    ``fingerprint`` what determined it, and ``stale`` whether it was kept although that changed
    (``reuse_stale``).
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
                "reason": reasons.get(metric, ""), "aupro_variant": run.get("aupro_variant", ""),
                "fingerprint": run.get("fingerprint", ""), "stale": bool(run.get("stale")),
                **{column: prov.get(column, "") for column in PROVENANCE_COLUMNS},
            })
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)
