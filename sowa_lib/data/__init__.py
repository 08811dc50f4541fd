"""Benchmarks in their official on-disk layouts, and the embedded demo benchmark.

``load(name, root, category=None, split="test")`` and ``categories(name, root)`` are the entry
points; each benchmark module provides ``categories(root)`` and ``load(root, category, split)``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from sowa_lib.data.sample import CorruptImageError, Sample

if TYPE_CHECKING:
    import pandas

DATASETS: dict[str, str] = {
    "mvtec": "sowa_lib.data.mvtec",
    "visa": "sowa_lib.data.visa",
    "btad": "sowa_lib.data.btad",
    "dagm": "sowa_lib.data.dagm",
    "dtd_synthetic": "sowa_lib.data.dtd_synthetic",
    "mvtec3d": "sowa_lib.data.mvtec3d",
    "demo": "sowa_lib.data.demo",
}


def _module(name: str) -> ModuleType:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return importlib.import_module(DATASETS[name])


def categories(name: str, root: str | Path) -> list[str]:
    """Categories of benchmark ``name`` found under ``root``, in the benchmark's canonical order."""
    return _module(name).categories(Path(root))


def load(name: str, root: str | Path, category: str | None = None, split: str = "test") -> list[Sample]:
    """Samples of ``split`` (``"train"`` or ``"test"``) for one category, or all when ``category`` is None."""
    module = _module(name)
    cats = [category] if category is not None else module.categories(Path(root))
    return [s for c in cats for s in module.load(Path(root), c, split)]


__all__ = ["DATASETS", "CorruptImageError", "Sample", "categories", "describe", "load"]


def describe(name: str, root: str | Path) -> "pandas.DataFrame":
    """Counts per category: train normal, test normal, test anomalous, and the defect types."""
    import pandas

    rows = []
    for category in categories(name, root):
        train, test = load(name, root, category, "train"), load(name, root, category, "test")
        rows.append({
            "category": category,
            "train_normal": sum(s.label == 0 for s in train),
            "test_normal": sum(s.label == 0 for s in test),
            "test_anomalous": sum(s.label == 1 for s in test),
            "defects": ", ".join(sorted({s.defect for s in test if s.label == 1})),
        })
    return pandas.DataFrame(rows)
