"""The messages of the errors a benchmark loader raises, each carrying the command that fixes it.

A missing or malformed dataset must never surface as a bare ``FileNotFoundError`` or as an empty
run: every loader raises one :class:`~sowa_lib.errors.DatasetError` naming the dataset, the path it
looked at, the layout it expected (datasets spec §2.2) and ``make data DATASETS=<name> DATA_ROOT=<root>``.
The classes live in :mod:`sowa_lib.errors`, with the library's other errors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from sowa_lib.errors import DatasetLayoutError, DatasetNotFoundError, UnknownCategoryError

SPLITS = ("train", "test")


def fix_command(dataset: str, root: Path) -> str:
    """The command that downloads (or explains how to obtain) ``dataset`` for a loader reading ``root``.

    ``make data`` puts each benchmark at ``DATA_ROOT/<name>`` (the demo's groups at
    ``DATA_ROOT/demo/{demo_a,demo_b}``), so ``DATA_ROOT`` is the parent of the folder named after
    the dataset, ``root`` or its parent. A root under another name cannot be filled in place: the
    command then says where the data will be, to load from there.
    """
    root = Path(root)
    dataset_dir = next((folder for folder in (root, root.parent) if folder.name == dataset), None)
    if dataset_dir is not None:
        return f"make data DATASETS={dataset} DATA_ROOT={dataset_dir.parent}"
    return f"make data DATASETS={dataset} DATA_ROOT={root.parent}, then load from {root.parent / dataset}"


def describe(dataset: str, problem: str, path: Path, expected: str, root: Path) -> str:
    """One message with the four facts a user needs: what, where, expected layout, fix."""
    return (f"{dataset}: {problem}\n  looked at: {path}\n  expected layout: {expected}\n"
            f"  fix: {fix_command(dataset, root)}")


def not_found(dataset: str, path: Path, expected: str, root: Path,
              problem: str = "dataset not found") -> DatasetNotFoundError:
    """A :class:`DatasetNotFoundError` with the :func:`describe` message."""
    return DatasetNotFoundError(describe(dataset, problem, path, expected, root))


def bad_layout(dataset: str, path: Path, expected: str, root: Path, problem: str) -> DatasetLayoutError:
    """A :class:`DatasetLayoutError` with the :func:`describe` message."""
    return DatasetLayoutError(describe(dataset, problem, path, expected, root))


def require_category(dataset: str, category: str, available: Iterable[str], root: Path, expected: str,
                     looked_at: Path | None = None) -> None:
    """Raise :class:`UnknownCategoryError` listing ``available`` unless ``category`` is one of them.

    The message has the :func:`describe` facts too (``looked_at`` defaults to ``root``): a category
    missing from a partial copy is fixed by fetching the dataset again.
    """
    available = list(available)
    if category not in available:
        problem = f"unknown category {category!r}; available: {', '.join(available) or '(none)'}"
        raise UnknownCategoryError(describe(dataset, problem, looked_at or root, expected, root))


def require_split(dataset: str, split: str, allowed: Iterable[str] = SPLITS) -> None:
    """Raise ``ValueError`` for a split the dataset does not have (a caller bug, not a data problem)."""
    allowed = tuple(allowed)
    if split not in allowed:
        raise ValueError(f"{dataset}: unknown split {split!r}; use one of {', '.join(allowed)}")
