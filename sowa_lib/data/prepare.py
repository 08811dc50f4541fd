"""``make data``: download, verify, extract and count-check benchmarks (datasets spec §2.1, §2.4, §2.5).

    python -m sowa_lib.data.prepare --datasets mvtec,visa --root DATA_ROOT

Each benchmark ends up at ``DATA_ROOT/<name>`` in its official layout, the root its loader reads
(VisA stays raw with ``split_csv/``; BTAD's ``.bmp`` files are kept, the loader reads them). The
archive goes to ``DATA_ROOT/downloads`` and is hashed (sha256 and md5, both printed) even when it was
already there. Per-category counts are asserted where the spec marks them [V]/[T] and only warned
about where they are [M]. ``demo`` generates the embedded demo benchmark instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from sowa_lib.data import DATASETS, demo
from sowa_lib.data.download import (SOURCES, Opener, check_hashes, download, file_hashes, manual_instructions,
                                    safe_extract, single_subfolder)
from sowa_lib.data.errors import fix_command
from sowa_lib.errors import DatasetError, DatasetLayoutError, ManualDownloadRequired

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
Log = Callable[[str], None]


def _log(message: str) -> None:
    print(message, flush=True)


def count_category(name: str, root: Path, category: str) -> tuple[int, int, int]:
    """(train images, test normal, test anomalous) of one category as its loader reads them."""
    module = importlib.import_module(DATASETS[name])
    test = module.load(root, category, "test")
    return len(module.load(root, category, "train")), sum(s.label == 0 for s in test), sum(s.label == 1 for s in test)


def count_problems(name: str, root: Path) -> list[str]:
    """Differences between the categories and counts on disk and the loader module's ``EXPECTED_COUNTS``."""
    module = importlib.import_module(DATASETS[name])
    expected: dict[str, tuple[int, int, int]] = module.EXPECTED_COUNTS
    found = module.categories(root)
    problems = [f"category {c!r} is missing" for c in expected if c not in found]
    for category in (c for c in found if c in expected):
        actual = count_category(name, root, category)
        if actual != expected[category]:
            problems.append(f"{category}: (train, test normal, test anomalous) = {actual}, expected {expected[category]}")
    for category, count in getattr(module, "EXPECTED_VALIDATION", {}).items():  # MVTec 3D-AD
        if category in found and (actual := len(module.load(root, category, "validation"))) != count:
            problems.append(f"{category}: {actual} validation images, expected {count}")
    return problems


def check_counts(name: str, root: Path, log: Log = _log) -> None:
    """Assert the counts where the spec verified them; print warnings where they are from memory."""
    module = importlib.import_module(DATASETS[name])
    problems = count_problems(name, root)
    if not problems:
        checked = f"{len(module.EXPECTED_COUNTS)} categories match the published counts" if module.EXPECTED_COUNTS \
            else "no published counts to compare with"
        log(f"{name}: {len(module.categories(root))} categories found; {checked}")
        return
    if module.COUNTS_VERIFIED:  # e.g. a re-packed mirror (spec §2.2 pitfall): not the benchmark the papers used
        raise DatasetLayoutError(f"{name}: the images under {root} differ from the published counts:\n    "
                                 + "\n    ".join(problems) + f"\n  fix: move {root} away and run "
                                 f"{fix_command(name, root)} to fetch the official archive")
    for problem in problems:
        log(f"warning: {name}: {problem} (the expected count is unverified; check it on disk)")


def _is_ready(name: str, target: Path) -> bool:
    """False when ``target`` is absent or empty; True when its loader accepts it; else a clear error."""
    if not target.exists() or not any(target.iterdir()):
        return False
    try:
        importlib.import_module(DATASETS[name]).categories(target)
    except DatasetError as err:
        raise DatasetLayoutError(f"{target} exists but is not a valid {name} folder (a partial or foreign copy?); "
                                 f"fix it or move it away, then run this again.\n{err}") from err
    return True


def _dataset_folder(name: str, extracted: Path) -> Path:
    """The folder inside an extracted archive that the loader accepts (descending single top folders)."""
    module = importlib.import_module(DATASETS[name])
    folder: Path | None = extracted
    while folder is not None:
        try:
            module.categories(folder)
            return folder
        except DatasetError:
            folder = single_subfolder(folder)
    module.categories(extracted)  # raises the loader's own description of what is wrong
    return extracted


def _fetch_and_extract(name: str, target: Path, downloads: Path, *, progress: bool, opener: Opener, log: Log) -> None:
    source = SOURCES[name]
    archive = downloads / source.filename
    if archive.exists():
        log(f"{name}: using {archive} (already downloaded)")
    else:
        log(f"{name}: downloading {source.url}\n  licence: {source.licence}")
        download(source.url, archive, progress=progress, opener=opener)
    hashes = file_hashes(archive)
    log(f"{name}: sha256 {hashes['sha256']}\n{name}: md5    {hashes['md5']}")
    check_hashes(hashes, source, archive)
    log(f"{name}: hash matches the published {' and '.join(a for a in ('sha256', 'md5') if getattr(source, a))}")
    staging = target.parent / f".{target.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    safe_extract(archive, staging)
    if target.exists():
        target.rmdir()  # empty, or _is_ready would have refused it
    _dataset_folder(name, staging).rename(target)  # one rename: target is never half-extracted
    shutil.rmtree(staging, ignore_errors=True)


def prepare_dataset(name: str, data_root: Path, *, downloads: Path | None = None, progress: bool = True,
                    opener: Opener = urllib.request.urlopen, log: Log = _log) -> Path:
    """Make ``data_root/<name>`` a complete, count-checked copy of benchmark ``name``; return it.

    An existing valid folder is only re-checked. A benchmark without a direct URL raises
    :class:`ManualDownloadRequired` with the instructions. ``opener`` replaces ``urlopen`` in tests.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    data_root = Path(data_root)
    target = data_root / name
    if name == "demo":
        demo.generate(target)
        log(f"demo: generated under {target}")
        return target
    if not _is_ready(name, target):
        if SOURCES[name].url is None:
            raise ManualDownloadRequired(f"{manual_instructions(name, target)}\n"
                                         f"Then check it with: {fix_command(name, target)}")
        _fetch_and_extract(name, target, downloads or data_root / "downloads",
                           progress=progress, opener=opener, log=log)
    check_counts(name, target, log)
    log(f"{name}: ready at {target}")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 when every requested dataset is ready, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", required=True, help=f"comma-separated, from: {', '.join(DATASETS)}")
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("DATA_ROOT") or REPO_DATA),
                        help="DATA_ROOT; each benchmark goes to DATA_ROOT/<name> (default: $DATA_ROOT or ./data)")
    parser.add_argument("--downloads", type=Path, default=None, help="archive folder (default: DATA_ROOT/downloads)")
    parser.add_argument("--no-progress", action="store_true", help="no download progress bar")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; available: {', '.join(DATASETS)}")
    failed = []
    for name in names:
        try:
            prepare_dataset(name, args.root, downloads=args.downloads, progress=not args.no_progress)
        except DatasetError as err:
            _log(f"\n{name}: NOT READY\n{err}\n")
            failed.append(name)
    if failed:
        _log(f"not ready: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
