"""Benchmarks in their official on-disk layouts, and the embedded demo benchmark.

``load(name, root, category=None, split="test")`` and ``categories(name, root)`` are the entry
points; each benchmark module provides ``categories(root)`` and ``load(root, category, split)``.
With ``meta_json=<file>`` both read a ``meta.json`` written for April-GAN, AnomalyCLIP, ADer or SOWA
(datasets spec §2.3) instead of the official layout; ``name`` then only labels the samples.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pandas

from sowa_lib.data.meta_json import load_meta_json, meta_json_categories
from sowa_lib.data.sample import Sample
from sowa_lib.errors import CorruptImageError
from sowa_lib.vocabulary import DEMO_DATASET, PAPER_DATASETS

#: Loader name -> its module: one per paper benchmark (:data:`~sowa_lib.vocabulary.PAPER_DATASETS`),
#: each in the module of its name, and the demo's.
DATASETS: dict[str, str] = {name: f"sowa_lib.data.{name}" for name in PAPER_DATASETS + (DEMO_DATASET,)}


def _module(name: str) -> ModuleType:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return importlib.import_module(DATASETS[name])


def categories(name: str, root: str | Path, *, meta_json: str | Path | None = None,
               split: str = "test") -> list[str]:
    """Categories of benchmark ``name`` found under ``root``, in the benchmark's canonical order.

    With ``meta_json``: the categories its ``split`` key lists (sorted).
    """
    if meta_json is not None:
        return meta_json_categories(Path(meta_json), Path(root), split, dataset=name)
    return _module(name).categories(Path(root))


def _load_split(name: str, root: Path, category: str, split: str, meta_json: Path | None) -> list[Sample]:
    if meta_json is not None:
        return load_meta_json(meta_json, root, split, category, dataset=name)
    return _module(name).load(root, category, split)


def load(name: str, root: str | Path, category: str | None = None, split: str = "test", *,
         meta_json: str | Path | None = None) -> list[Sample]:
    """Samples of ``split`` for one category, or all when ``category`` is None.

    ``split`` is ``"train"`` or ``"test"`` (MVTec 3D-AD also ``"validation"``), or several joined by
    ``+``, concatenated per category in that order: ``"train+validation"`` is ADer's MVTec 3D-AD
    training set (spec §2.2). ``meta_json``: read the samples from this ``meta.json`` (spec §2.3),
    its paths relative to ``root``, instead of the official layout.
    """
    root, meta = Path(root), None if meta_json is None else Path(meta_json)
    parts = split.split("+")
    cats = [category] if category is not None else categories(name, root, meta_json=meta, split=parts[0])
    return [s for c in cats for part in parts for s in _load_split(name, root, c, part, meta)]


def full_category_set(dataset: str) -> tuple[str, ...] | None:
    """Every category of study dataset ``dataset`` (``mvtec`` ... or a demo group ``demo_a``): the
    set the papers' means (and the tables' mean rows) average over; None for an unknown dataset."""
    groups = _module(DEMO_DATASET).GROUPS
    if dataset in groups:
        return tuple(c.name for c in groups[dataset])
    if dataset not in DATASETS:
        return None
    return tuple(getattr(_module(dataset), "CATEGORIES", ())) or None


__all__ = ["DATASETS", "CorruptImageError", "Sample", "categories", "describe", "full_category_set", "load"]


def describe(name: str, root: str | Path) -> pandas.DataFrame:
    """Counts per category: train normal, test normal, test anomalous, and the defect types."""
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
