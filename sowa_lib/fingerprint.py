"""Fingerprints: what determined a stored run or checkpoint, so that nothing is reused unless it is
what the plan would compute now (DESIGN.md, "Results, provenance and reuse").

A fingerprint is the SHA-256 (first 16 hex digits) of a JSON-canonical dict of *parts* (sorted keys,
no whitespace). The runner (:mod:`sowa_lib.evaluate`) builds the parts of a run from

- ``config``: the method configuration in effect (every constructor option, defaults resolved,
  :func:`sowa_lib.methods.configuration`), derived from the plan without building the method;
- ``data``: the identity of the test split (:func:`files_identity`: relative paths, sizes and
  modification times of images and masks; for the demo benchmark its manifest's content hash);
- ``references``: the K-shot reference files;
- ``training``: the parts of the checkpoint the run's model was trained into (config, training set
  identity), for methods that train;
- ``metrics``: the AUPRO definition and :data:`METRICS_VERSION`;
- ``code``: :data:`sowa_lib.__version__`.

Decision: the git commit and the dirty flag are **provenance, not part of the reuse key**
(:func:`code_state` records them with every run). If every commit invalidated every run, a README
edit would recompute the whole study, and a dirty tree (any notebook output) would make nothing
reusable; then users learn to ignore invalidation. What a run depends on is its configuration, its
data, its references, its metric definitions and the computation the library performs. The first
four are keyed exactly; the last is keyed by the package version, which is bumped whenever a change
alters what the library computes (and :data:`METRICS_VERSION` when a metric's definition changes),
so a stale result is recomputed on the next run rather than silently mixed with new ones.

A file whose fingerprint differs from the plan's is moved aside (:func:`set_aside`: renamed to
``<name>.stale-<UTC time>``, a name no reader of the store globs) and recomputed, unless the user
asks to reuse stale results (``run_plan(reuse_stale=True)``, ``SOWA_REUSE_STALE=1``), in which case
the tables say so.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import sowa_lib

#: Bump when the definition of a stored metric changes (what ``sowa_lib.metrics`` computes for the
#: same predictions), so that every stored run is recomputed.
METRICS_VERSION = 1

#: Environment variable that makes ``run_plan`` keep stale runs (``notebooks/reproduce.py --reuse-stale``).
REUSE_STALE_ENV = "SOWA_REUSE_STALE"


def canonical(parts: Mapping[str, Any]) -> str:
    """``parts`` as canonical JSON: sorted keys, no whitespace, tuples as lists, other objects by ``str``."""
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)


def digest(parts: Mapping[str, Any]) -> str:
    """The fingerprint of ``parts``: first 16 hex digits of the SHA-256 of :func:`canonical`."""
    return hashlib.sha256(canonical(parts).encode()).hexdigest()[:16]


def differing_keys(stored: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """Dotted names of the parts that differ (``config.lr``, ``metrics.aupro_variant``), descending
    into nested dicts; ``["<no fingerprint>"]`` when nothing was stored."""
    if stored is None:
        return ["<no fingerprint>"]
    stored, current = json.loads(canonical(stored)), json.loads(canonical(current))

    def walk(a: Any, b: Any, prefix: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [name for key in sorted({*a, *b}) for name in walk(a.get(key), b.get(key), f"{prefix}{key}.")]
        return [] if a == b else [prefix.rstrip(".")]

    return walk(stored, current, "")


def files_identity(paths: Iterable[Path], root: Path) -> str:
    """Digest of the sorted (path relative to ``root``, size, modification time in ns) of ``paths``:
    what identifies a dataset split without reading its bytes."""
    rows = []
    for path in paths:
        stat = Path(path).stat()
        rows.append((Path(path).relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return digest({"files": sorted(rows)})


def code_version() -> dict[str, Any]:
    """The part of the code that is in the reuse key: the package version (module docstring)."""
    return {"sowa_lib": sowa_lib.__version__}


@lru_cache(maxsize=1)
def code_state() -> dict[str, Any]:
    """Provenance only (module docstring): ``commit`` (``unknown`` outside a git checkout) and ``dirty``
    (tracked files modified; None when unknown)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit or "unknown", "dirty": None if status is None else bool(status)}


def set_aside(path: Path) -> Path:
    """Rename a stale file or folder to ``<name>.stale-<UTC time>`` beside it; returns the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.stale-{stamp}")
    os.replace(path, target)
    return target


def reuse_stale_default() -> bool:
    """Whether :data:`REUSE_STALE_ENV` asks to keep stale results (``1``/``true``/``yes``)."""
    return os.environ.get(REUSE_STALE_ENV, "").strip().lower() in ("1", "true", "yes")
