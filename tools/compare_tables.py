"""Compare the tables of two results folders byte for byte (issue #14: a refactor leaves the demo tables
unchanged).

    python tools/compare_tables.py BEFORE/results/demo AFTER/results/demo

Every file under ``<folder>/tables`` is compared; the script prints the files that are missing on one
side or differ (with the first differing line) and exits 1 if any, 0 when all are identical. The one
thing a rerun cannot reproduce is a measured speed: the reproduced value of an ``efficiency`` row
whose metric is a timing (:data:`TIMINGS`) in the CSV tables, and a cell ``<number> (CPU)`` in the
Markdown and LaTeX ones, is masked (``--strict`` compares those too); parameter counts and GFLOPs are
compared like any other value.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

#: Efficiency metrics that are measured times, different on every run.
TIMINGS = ("fps", "seconds_per_image", "ratio", "cpu_ratio", "peak_memory_gb")
#: The columns of a CSV table that hold what a run measured (and what is derived from it).
MEASURED_COLUMNS = ("reproduced", "reproduced_std", "reproduced_std_ddof0", "delta")
CPU_CELL = re.compile(r"-?\d+(?:\.\d+)? \(CPU\)")


def table_files(results: Path) -> dict[str, Path]:
    root = results / "tables"
    if not root.is_dir():
        raise SystemExit(f"{root} does not exist: run the notebooks first (make reproduce-all)")
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def first_difference(a: bytes, b: bytes) -> str:
    lines_a, lines_b = a.decode(errors="replace").splitlines(), b.decode(errors="replace").splitlines()
    for number, (line_a, line_b) in enumerate(zip(lines_a, lines_b), start=1):
        if line_a != line_b:
            return f"line {number}:\n    - {line_a[:160]}\n    + {line_b[:160]}"
    return f"lengths differ ({len(lines_a)} vs {len(lines_b)} lines)"


def mask_timings(name: str, content: bytes) -> bytes:
    """``content`` with the measured timings blanked (see the module docstring)."""
    text = content.decode()
    if name.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or not {"setting", "metric"} <= rows[0].keys():
            return content
        for row in rows:
            if row["setting"] == "efficiency" and row["metric"] in TIMINGS:
                row.update({column: "<timing>" for column in MEASURED_COLUMNS if column in row})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode()
    return CPU_CELL.sub("<timing> (CPU)", text).encode()


def compare(before: Path, after: Path, strict: bool = False) -> list[str]:
    """One message per table that is missing on a side or differs."""
    files_a, files_b = table_files(before), table_files(after)
    problems = [f"only in {before}: {name}" for name in sorted(files_a.keys() - files_b.keys())]
    problems += [f"only in {after}: {name}" for name in sorted(files_b.keys() - files_a.keys())]
    for name in sorted(files_a.keys() & files_b.keys()):
        a, b = files_a[name].read_bytes(), files_b[name].read_bytes()
        if not strict:
            a, b = mask_timings(name, a), mask_timings(name, b)
        if a != b:
            problems.append(f"differs: {name}, {first_difference(a, b)}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="results folder of one profile, e.g. results/demo")
    parser.add_argument("after", type=Path)
    parser.add_argument("--strict", action="store_true", help="compare measured timings too")
    args = parser.parse_args()
    problems = compare(args.before, args.after, args.strict)
    count = len(table_files(args.before))
    for problem in problems:
        print(problem)
    same = "all identical" + ("" if args.strict else " (measured timings masked)")
    print(f"{count} tables in {args.before}: {same if not problems else f'{len(problems)} differences'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
