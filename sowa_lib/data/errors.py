"""The errors a benchmark loader raises, each carrying the command that fixes it.

A missing or malformed dataset must never surface as a bare ``FileNotFoundError`` or as an empty
run: every loader raises one :class:`DatasetError` naming the dataset, the path it looked at, the
layout it expected (datasets spec §2.2) and ``make data DATASETS=<name> DATA_ROOT=<root>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPLITS = ("train", "test")


class DatasetError(RuntimeError):
    """Base class of every dataset problem; the message is meant for the user as is."""


class DatasetNotFoundError(DatasetError):
    """The dataset (or a file a split list names) is not where the loader looked."""


class DatasetLayoutError(DatasetError):
    """The dataset is there but does not follow the official layout (unpaired masks, bad CSV, ...)."""


class UnknownCategoryError(DatasetError, KeyError):
    """A category that the dataset does not contain; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def fix_command(dataset: str, root: Path) -> str:
    """The command that downloads (or explains how to obtain) ``dataset`` into ``root``.

    Dataset folders live at ``DATA_ROOT/<name>`` (``sowa_lib.profiles.paper_profile``), so the
    command names the parent of the dataset root.
    """
    return f"make data DATASETS={dataset} DATA_ROOT={Path(root).parent}"


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


def require_category(dataset: str, category: str, available: Iterable[str], root: Path) -> None:
    """Raise :class:`UnknownCategoryError` listing ``available`` unless ``category`` is one of them."""
    available = list(available)
    if category not in available:
        raise UnknownCategoryError(f"{dataset}: unknown category {category!r} under {root}; "
                                   f"available: {', '.join(available) or '(none)'}")


def require_split(dataset: str, split: str, allowed: Iterable[str] = SPLITS) -> None:
    """Raise ``ValueError`` for a split the dataset does not have (a caller bug, not a data problem)."""
    allowed = tuple(allowed)
    if split not in allowed:
        raise ValueError(f"{dataset}: unknown split {split!r}; use one of {', '.join(allowed)}")
