"""The claims' stored source rows (``source_header``, ``source_row``) against the full texts they
were taken from: the paper texts (``SOWA_PAPERS_DIR``) and, for SOWA's digitized figure values, the
spec's reading tables (``SOWA_SPECS_DIR``); by default ``../shared/{papers,specs}`` beside the
repository. Skipped with a one-line reason where the texts are absent, except when ``CI`` is set:
then a missing text fails. ``tests/test_claims.py`` checks every value against its stored row."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from sowa_lib.claims import PAPERS, raw_claims
from test_claims import AGPNET_POSITIONAL, PROSE_TABLES, SOURCE, _cited_cell

# Where each table lives in its text file: the first line containing `start` up to (excluding)
# the first later line containing `end`. Digitized SOWA figure values live in the spec.
_AG = [(f"Table {n}", f"Table {n}:", end) for n, end in [
    (1, "Training."), (2, "3.2 Qualitative"), (3, "Table 4:"), (4, "As illustrated in the last three rows"),
    (5, "Table 6:"), (6, "Table 7:"), (7, "Table 8:"), (8, "Table 9:"), (9, "Table 10:"), (10, "Table 11:"),
    (11, "Table 12:"), (12, "References")]]
REGIONS = {
    "sowa": [("readme_table_1", "Comparisons with few-shot (K=4)", "Performance Comparison on MVTec-AD"),
             ("readme_table_2", "Performance Comparison on MVTec-AD", "Comparisons with few-shot anomaly detection"),
             ("fig5", "### 4.3", "### 4.4"), ("fig9", "### 4.4", "### 4.5"),
             ("fig8a", "(a) SOWA, 0-shot", "(b) 0-shot"), ("fig8b", "(b) 0-shot", "(c) Gain"),
             ("fig8c", "(c) Gain", "### 4.7")],
    "april_gan": _AG,
    "winclip": [("abstract", "Abstract", "Tasks"), ("pwc_benchmark", "Benchmark Results", "Reproductions")],
    "agpnet": [("Table 1", "In particular, we performed a 32-fold", "4.2 Anomaly Detection on MVTec-AD"),
               ("Table 2", "The heatmaps which generate by", "Evaluation on MVTec-AD under the one-class setting"),
               ("Table 3", "suitability for diverse real-world applications.", "4.3 Anomaly Detection on VisA"),
               ("Table 4", "4.4 Anomaly Detection on MVTec-3D", "Baseline. To further verify"),
               ("Table 5", "4.5 Ablation Study", "Attention-Guided Noise. Table 5"),
               ("Table 6", "Attention-Guided Noise. Table 5", "Backbone. To prove"),
               ("Table 7", "Multi-Layer Features. Table 8", "Mean Teacher Decoder. Table 8"),
               ("Table 8", "Easy-to-Hard Noise Addition", "Attention Map. Table 7"),
               ("Table 9", "4.6 Efficiency Comparison", "In addition to model performance"),
               ("Table 10", "4.7 Extending to Few-shot", "5 Limitation")],
}
# Rows that are paragraphs: the stored row is the row label and the figures printed right after it.
EXCERPTED_TABLES = {("winclip", "abstract")}


def _region(lines: list[str], start: str, end: str) -> range:
    first = next(i for i, line in enumerate(lines) if start in line)
    last = next(i for i in range(first + 1, len(lines)) if end in lines[i])
    return range(first, last)


# The texts the stored rows were taken from (the index of the papers folder names each paper), and
# SOWA's figure digitization (the spec's tables of read-off values).
PAPER_FILES = {"sowa": "000_fa02335cb43e93f2.txt", "april_gan": "001_65b250487927253c.txt",
               "winclip": "002_b47d1be3e4547911.txt", "agpnet": "003_694cbe08c2115663.txt"}
DIGITIZATION = "sowa.md"
EXPORT_PLUS_MINUS = "±plus-or-minus\\pm"  # how April-GAN's text export spells the printed ±


def _text_dirs() -> tuple[Path, Path]:
    """The paper texts (``SOWA_PAPERS_DIR``) and specs (``SOWA_SPECS_DIR``); by default the
    workplace's ``../shared/{papers,specs}`` beside the repository."""
    shared = Path(__file__).resolve().parents[1].parent / "shared"
    return (Path(os.environ.get("SOWA_PAPERS_DIR", shared / "papers")),
            Path(os.environ.get("SOWA_SPECS_DIR", shared / "specs")))


def _as_printed(line: str) -> str:
    """A text line as the paper prints it: the export's ± spelled ±, trailing empty cells dropped."""
    return re.sub(r"[\s|]+$", "", line.replace(EXPORT_PLUS_MINUS, "±")).strip()


def _excerpt(line: str, row: str) -> str | None:
    """The row label and the figures printed right after it (``WinCLIP achieves 91.8%/85.1% (...)``)."""
    match = re.search(re.escape(row) + r"[\s\d.%/()±]*", line)
    return match.group().strip() if match else None


def _source_of(lines: list[str], number: int, region: range, row: str, col: str, kind: str) -> tuple[str, str]:
    """(source_header, source_row) of a claim printed on line ``number``: the row as printed, and
    the nearest line above it (in the table) whose column heads place ``col`` (empty where the row
    alone places the value: positional columns, rows without columns)."""
    if kind == "excerpt":
        return "", _excerpt(lines[number], row) or ""
    line = _as_printed(lines[number])
    if kind == "prose" or AGPNET_POSITIONAL.fullmatch(col):
        return "", line
    for i in range(number - 1, region.start - 1, -1):
        header = _as_printed(lines[i])
        if _cited_cell(header, line, row, col) is not None:
            return header, line
    return "", line


def _kind(paper: str, table: str) -> str:
    return ("excerpt" if (paper, table) in EXCERPTED_TABLES else "prose" if (paper, table) in PROSE_TABLES
            else "table")


def _text_problems(paper: str, raw: pd.DataFrame, papers: Path, specs: Path) -> list[str]:
    """Every claim whose stored (source_header, source_row) is not what the full text prints: some
    line of the claim's table with its row label must be that row, with that header the nearest one
    above placing the cited column. The message lists what those lines give (what to store)."""
    regions = {table: (start, end) for table, start, end in REGIONS[paper]}
    texts: dict[Path, list[str]] = {}
    spans: dict[tuple[Path, str], range] = {}
    problems = []
    for index, claim in raw.iterrows():
        match = SOURCE.match(claim["source"])
        path = specs / DIGITIZATION if claim["digitized"] == "True" else papers / PAPER_FILES[paper]
        lines = texts.setdefault(path, path.read_text().split("\n"))
        region = spans.setdefault((path, claim["table"]), _region(lines, *regions[claim["table"]]))
        kind = _kind(paper, claim["table"])
        stored = (claim["source_header"], claim["source_row"])
        printed = [_source_of(lines, n, region, match["row"], match["col"], kind) for n in region if match["row"] in lines[n]]
        if stored not in printed:
            problems.append(f"row {index + 2}: stored {stored} is not printed in {claim['table']} of {path.name}; "
                            f"the lines there with its row label give {printed}")
    return problems


@pytest.fixture(scope="module")
def text_dirs() -> tuple[Path, Path]:
    """The full texts; skipped with a reason where they are absent, except under CI, which must run it."""
    papers, specs = _text_dirs()
    missing = [str(d) for d in (papers, specs) if not d.is_dir()]
    if missing:
        reason = f"full texts not found at {', '.join(missing)} (set SOWA_PAPERS_DIR, SOWA_SPECS_DIR)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    return papers, specs


@pytest.mark.parametrize("paper", PAPERS)
def test_stored_source_rows_are_printed_in_the_texts(paper: str, text_dirs: tuple[Path, Path]) -> None:
    assert _text_problems(paper, raw_claims(paper), *text_dirs) == []


def test_a_stored_row_the_text_does_not_print_is_caught(text_dirs: tuple[Path, Path]) -> None:
    """A changed figure in a stored row, or a stored header that does not place the column, fails."""
    raw = raw_claims("april_gan")
    carpet = raw[(raw["table"] == "Table 5") & (raw["category"] == "carpet")].head(2).copy()
    carpet.iloc[0, carpet.columns.get_loc("source_row")] = carpet.iloc[0]["source_row"].replace("98.4", "98.5")
    carpet.iloc[1, carpet.columns.get_loc("source_header")] = "Object"
    problems = _text_problems("april_gan", carpet, *text_dirs)
    assert len(problems) == 2, problems
