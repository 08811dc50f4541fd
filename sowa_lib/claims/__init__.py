"""The papers' claims as data: one row per printed number (issue 6, "Claims").

One CSV per paper lives next to this module (``sowa.csv``, ``april_gan.csv``, ``winclip.csv``,
``agpnet.csv``), transcribed from the papers' texts (SOWA figure values from this study's
digitization of the README figures). Each row carries the printed line it was read from, so the
check that every value stands where its source says (``tests/test_claims.py``) runs on any clone.
Columns (``CLAIM_COLUMNS``):

- ``paper``: the paper that *prints* the number (a number printed by two papers has two rows).
- ``table``: the paper's own table id (``Table 3``) or name (``readme_table_1``, ``fig5``, ``abstract``).
- ``dataset`` (:data:`~sowa_lib.vocabulary.CLAIM_DATASETS`), ``category`` (the project's category
  id, or ``mean`` for the printed average; empty where not applicable, e.g. efficiency), ``method``
  (:data:`~sowa_lib.vocabulary.METHODS` plus competitors we do not implement, named as printed in
  lower snake case).
- ``setting`` (:data:`~sowa_lib.vocabulary.CLAIM_SETTINGS`) and ``shots`` (0 for zero-shot, K for
  K-shot, empty where not applicable: multi-/one-class full-data training, efficiency, the VAND
  few-shot track).
- ``variant``: ``default`` or the ablation option (path-safe, e.g. ``backbone=clip_vit_b``).
- ``metric`` (:data:`~sowa_lib.vocabulary.CLAIM_METRICS`), ``value`` and ``std`` exactly as printed
  (percent with 0.1 precision for quality metrics; leaderboard rows are the VAND fractions as
  printed; efficiency units as printed: fps in images/s, params in millions, gflops in GFLOPs).
- ``digitized`` (read off a figure), ``uncertainty`` (stated reading uncertainty, points),
  ``inferred`` (an attribution that the source does not state: a column header the export lost,
  inferred from the text, or a fig5 baseline marker at K=1/2, assigned to a method from the printed
  K=4 order; the reason is in ``source``), ``source`` (``paper; table; row '...'; col '...'; note:
  ...``: the paper by arXiv id or repository, the row label and column name as printed).
- ``source_row``: the row as the paper prints it (for a table, the whole printed line: row label and
  figures; for a paragraph, the row label and the figures right after it; for a digitized figure,
  the reading's row), and ``source_header``: the printed column heads that place ``col`` (empty
  where the row alone places it: positional columns of AGPNet's export, prose).
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

from sowa_lib.errors import ClaimsError
from sowa_lib.vocabulary import CLAIM_DATASETS, CLAIM_METRICS, CLAIM_SETTINGS

PAPERS = ("sowa", "april_gan", "winclip", "agpnet")
CLAIM_COLUMNS = [
    "paper", "table", "dataset", "category", "method", "setting", "shots", "variant", "metric",
    "value", "std", "digitized", "uncertainty", "inferred", "source", "source_header", "source_row",
]
# The fields that identify one claim; no two rows share them.
KEY_COLUMNS = ["paper", "table", "dataset", "category", "method", "setting", "shots", "variant", "metric"]
# The fields that say *which* number a claim is, whichever paper and table print it.
CLAIM_IDENTITY = KEY_COLUMNS[2:]

def _read(paper: str) -> pd.DataFrame:
    """One paper's CSV with typed columns (``shots`` nullable int, ``std``/``uncertainty`` float)."""
    raw = raw_claims(paper)
    if list(raw.columns) != CLAIM_COLUMNS:
        raise ClaimsError(f"{paper}.csv: columns {list(raw.columns)} != {CLAIM_COLUMNS}")
    validate(raw, paper)
    frame = raw.copy()
    frame["shots"] = pd.to_numeric(frame["shots"].replace("", None)).astype("Int64")
    for name in ("value", "std", "uncertainty"):
        frame[name] = pd.to_numeric(frame[name].replace("", None)).astype(float)
    for name in ("digitized", "inferred"):
        frame[name] = frame[name] == "True"
    return frame


def _violations(raw: pd.DataFrame, paper: str) -> list[tuple[str, pd.Series]]:
    """(message template over the row's fields, rows that break the rule) for every schema rule."""
    def blank(column: str) -> pd.Series:
        return raw[column] == ""

    def number(column: str) -> pd.Series:
        return pd.to_numeric(raw[column], errors="coerce").notna()

    flags = raw["digitized"].isin(["True", "False"]) & raw["inferred"].isin(["True", "False"])
    return [
        ("paper {paper!r} in the wrong file", raw["paper"] != paper),
        ("unknown metric {metric!r}", ~raw["metric"].isin(CLAIM_METRICS)),
        ("unknown setting {setting!r}", ~raw["setting"].isin(CLAIM_SETTINGS)),
        ("unknown dataset {dataset!r}",
         ~(raw["dataset"].isin(CLAIM_DATASETS) | (blank("dataset") & (raw["setting"] == "efficiency")))),
        ("shots {shots!r} is not an int", ~(blank("shots") | raw["shots"].str.fullmatch(r"\d+"))),
        ("zero_shot needs shots 0", (raw["setting"] == "zero_shot") & (raw["shots"] != "0")),
        ("few_shot needs shots > 0", (raw["setting"] == "few_shot") & raw["shots"].isin(["", "0"])),
        ("method {method!r} is not a lower-case id", ~raw["method"].str.fullmatch(r"[a-z0-9_]+")),
        ("variant {variant!r} is empty or not path-safe", blank("variant") | raw["variant"].str.contains("/")),
        ("value {value!r} is not a number", ~number("value")),
        ("std {std!r} is not a number", ~(blank("std") | number("std"))),
        ("uncertainty {uncertainty!r} is not a number", ~(blank("uncertainty") | number("uncertainty"))),
        ("digitized {digitized!r} / inferred {inferred!r} must be True or False", ~flags),
        ("uncertainty {uncertainty!r} given for a printed value", (raw["digitized"] != "True") & ~blank("uncertainty")),
        ("empty source", blank("source")),
        ("empty source row", blank("source_row")),
    ]


def validate(raw: pd.DataFrame, paper: str) -> None:
    """Raise :class:`ClaimsError` naming the file row that breaks a rule (vocabularies, types) or
    repeats a claim key."""
    for message, bad in _violations(raw, paper):
        if bad.any():
            index = bad.idxmax()
            row = raw.loc[index]
            raise ClaimsError(f"{paper}.csv row {index + 2}: {message.format(**row)}: {dict(row)}")
    duplicated = raw.duplicated(KEY_COLUMNS, keep=False)
    if duplicated.any():
        index = duplicated.idxmax()
        raise ClaimsError(f"{paper}.csv row {index + 2}: duplicate claim key {dict(raw.loc[index, KEY_COLUMNS])}")


def load_claims(paper: str | None = None) -> pd.DataFrame:
    """All claims (or one paper's), validated, in file order; ``value``/``std`` as floats."""
    papers = PAPERS if paper is None else (paper,)
    unknown = set(papers) - set(PAPERS)
    if unknown:
        raise ValueError(f"unknown paper {sorted(unknown)}; choose from {PAPERS}")
    return pd.concat([_read(name) for name in papers], ignore_index=True)


def raw_claims(paper: str) -> pd.DataFrame:
    """One paper's CSV as printed strings (for checking values against the paper text)."""
    with resources.files(__package__).joinpath(f"{paper}.csv").open() as handle:
        return pd.read_csv(handle, dtype=str, keep_default_na=False)



def disagreements(claims: pd.DataFrame) -> pd.DataFrame:
    """Pairs of rows (from two papers, or two tables of one paper) that state the same number
    (same ``CLAIM_IDENTITY``) but disagree.

    Two printed values disagree when value or std differ; a digitized value disagrees with another
    when they differ by more than the sum of their stated uncertainties (rows without a stated
    uncertainty, e.g. fig9 bar labels, are compared as printed). One row per disagreeing pair,
    with both sources.
    """
    frame = claims.assign(_u=claims["uncertainty"].fillna(0.0), _k=claims["shots"].astype("string").fillna(""))
    key = [c if c != "shots" else "_k" for c in CLAIM_IDENTITY]
    pairs = frame.reset_index().merge(frame.reset_index(), on=key, suffixes=("_a", "_b"))
    pairs = pairs[pairs["index_a"] < pairs["index_b"]]
    differs = (pairs["value_a"] - pairs["value_b"]).abs() > pairs["_u_a"] + pairs["_u_b"] + 1e-9
    printed = ~pairs["digitized_a"] & ~pairs["digitized_b"]
    std_differs = printed & pairs["std_a"].notna() & pairs["std_b"].notna() & (pairs["std_a"] != pairs["std_b"])
    out = pairs[differs | std_differs]
    columns = [c for c in CLAIM_IDENTITY if c != "shots"] + ["shots_a"]
    for side in ("a", "b"):
        columns += [f"paper_{side}", f"table_{side}", f"value_{side}", f"std_{side}", f"digitized_{side}", f"source_{side}"]
    return out[columns].rename(columns={"shots_a": "shots"}).reset_index(drop=True)


__all__ = [
    "CLAIM_COLUMNS", "CLAIM_IDENTITY", "KEY_COLUMNS", "PAPERS", "disagreements", "load_claims",
    "raw_claims", "validate",
]
