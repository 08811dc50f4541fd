"""Claims (issue 6): schema, vocabularies, every value checked against its stored printed source row
(on any clone) and those rows against the full paper texts (where they are present), and the
numbers that two papers (or a paper and a figure) print differently."""
from __future__ import annotations

import re
import warnings

import pandas as pd
import pytest

from sowa_lib.claims import (
    CLAIM_COLUMNS, KEY_COLUMNS, PAPERS, disagreements, load_claims,
    raw_claims, validate,
)
from sowa_lib.errors import ClaimsError
from sowa_lib.vocabulary import CLAIM_DATASETS, CLAIM_METRICS, CLAIM_SETTINGS, METHODS


# Claims per (paper, table): a guard against silently lost or duplicated rows.
EXPECTED_COUNTS = {
    "sowa": {"readme_table_1": 60, "readme_table_2": 42, "fig5": 174, "fig9": 12, "fig8a": 24, "fig8b": 24, "fig8c": 24},
    "april_gan": {"Table 1": 15, "Table 2": 15, "Table 3": 106, "Table 4": 106, **{f"Table {n}": 112 for n in (5, 6, 7, 8)},
                  **{f"Table {n}": 91 for n in (9, 10, 11, 12)}},
    "winclip": {"abstract": 8, "pwc_benchmark": 8},
    "agpnet": {"Table 1": 321, "Table 2": 210, "Table 3": 234, "Table 4": 15, "Table 5": 18, "Table 6": 16,
               "Table 7": 14, "Table 8": 12, "Table 9": 15, "Table 10": 43},
}

SOURCE = re.compile(r"^(?P<ref>[^;]+); (?P<table>[^;]+); row '(?P<row>[^']*)'; col '(?P<col>[^']*)'")
# Tables with no column structure: the value is looked up anywhere on its printed row.
PROSE_TABLES = {("winclip", "abstract"), ("winclip", "pwc_benchmark")}
# AGPNet's export lost most column headers: ``column N`` counts cells after the row label (``Ours``
# is the last), and a trailing metric picks its part of an ``I-AUC / P-AUC / PRO`` cell.
AGPNET_POSITIONAL = re.compile(r"(?:column (?P<n>\d+)|Ours)(?: (?P<part>I-AUC|P-AUC|PRO))?")
AGPNET_PARTS = ("I-AUC", "P-AUC", "PRO")


def test_every_paper_loads_with_the_agreed_columns_and_vocabularies() -> None:
    claims = load_claims()
    assert list(claims.columns) == CLAIM_COLUMNS
    assert set(claims["paper"]) == set(PAPERS)
    assert set(claims["metric"]) <= set(CLAIM_METRICS)
    assert set(claims["setting"]) <= set(CLAIM_SETTINGS)
    assert set(claims["dataset"]) <= set(CLAIM_DATASETS) | {""}
    assert set(METHODS) <= set(claims["method"])
    assert claims["value"].notna().all()
    assert (claims.loc[claims["setting"] == "zero_shot", "shots"] == 0).all()
    assert (claims.loc[claims["setting"] == "few_shot", "shots"] > 0).all()


def test_no_claim_is_stated_twice() -> None:
    claims = load_claims()
    assert not claims.duplicated(KEY_COLUMNS).any()


@pytest.mark.parametrize("paper", PAPERS)
def test_claims_per_table(paper: str) -> None:
    counts = raw_claims(paper).groupby("table").size().to_dict()
    assert counts == EXPECTED_COUNTS[paper]


@pytest.mark.parametrize(("column", "bad"), [("metric", "auroc"), ("dataset", "mvtec_ad"), ("shots", "4-shot")])
def test_validation_names_the_bad_row(column: str, bad: str) -> None:
    raw = raw_claims("winclip")
    raw.loc[3, column] = bad
    with pytest.raises(ClaimsError, match=r"winclip\.csv row 5: .*" + re.escape(bad)):
        validate(raw, "winclip")


def test_validation_rejects_duplicates() -> None:
    raw = raw_claims("winclip")
    with pytest.raises(ClaimsError, match="duplicate"):
        validate(pd.concat([raw, raw.iloc[[0]]], ignore_index=True), "winclip")


def test_inferred_and_digitized_claims_say_why() -> None:
    claims = load_claims()
    assert claims.loc[claims["inferred"], "source"].str.contains("; note: ").all()
    digitized = claims[claims["digitized"]]
    assert digitized["source"].str.contains("digitized by this study").all()
    assert (digitized["table"].str.startswith("fig")).all()
    # The stated reading uncertainty is kept wherever the spec states one (fig9 bar labels state none).
    assert digitized.loc[digitized["table"] != "fig9", "uncertainty"].notna().all()


def _value_pattern(value: str, std: str) -> re.Pattern[str]:
    """The printed number, followed by its ± std when it has one, and not followed by a ± when it
    has none."""
    tail = r"±" + re.escape(std) + r"(?![\d])" if std else r"(?![\d]|±)"
    return re.compile(r"(?<![\d.])" + re.escape(value) + tail)


def _cells(line: str) -> list[str]:
    """The cells of a '|'-separated table line (Markdown's leading pipe dropped, bold marks stripped)."""
    return [cell.strip().strip("*") for cell in line.strip().removeprefix("|").split("|")]


def _subcell(cell: str, index: int) -> str | None:
    parts = cell.split("/")
    return parts[index].strip() if index < len(parts) else None


def _whitespace_cell(header: str, line: str, row: str, col: str) -> str | None:
    """April-GAN's tables: after the row label, one whitespace-separated value per header column
    (the header's last columns; leading ones such as ``Setting Method`` label the row)."""
    values = line.split(row, 1)[1].split()
    columns = header.split()[-len(values):] if values else []
    return values[columns.index(col)] if col in columns else None


def _pipe_cell(header_line: str, line: str, col: str) -> str | None:
    """The cell of a '|'-separated line under column ``col``: a header cell named ``col`` (or
    starting with it, e.g. ``K=1 (two markers)``), a part of a combined header cell such as
    ``I-AUC/P-AUC(%)``, or, where AGPNet's export lost the header, ``column N`` (N-th cell after the
    row label; ``Ours`` is the last) with ``I-AUC``/``P-AUC``/``PRO`` picking the part of an
    ``I-AUC / P-AUC / PRO`` cell."""
    cells = _cells(line)
    positional = AGPNET_POSITIONAL.fullmatch(col)
    if positional:
        index = int(positional["n"]) if positional["n"] else max(i for i, cell in enumerate(cells) if cell)
        if index >= len(cells):
            return None
        return _subcell(cells[index], AGPNET_PARTS.index(positional["part"])) if positional["part"] else cells[index]
    header = _cells(header_line) if "|" in header_line else []
    # A row whose leading, row-spanning cell the export dropped (``| Visa | 87.3±1.8 | ... |``) is
    # short by that many cells at the front.
    shift = max(0, _width(header) - _width(cells))
    for index, name in enumerate(header):
        parts = [part.strip() for part in name.removesuffix("(%)").split("/")]
        if not 0 <= index - shift < len(cells):
            continue
        if name == col or name.startswith(col + " "):
            return cells[index - shift]
        if len(parts) > 1 and col in parts:
            return _subcell(cells[index - shift], parts.index(col))
    return None


def _width(cells: list[str]) -> int:
    """Cells up to the last non-empty one."""
    return max((i + 1 for i, cell in enumerate(cells) if cell), default=0)


def _cited_cell(header: str, line: str, row: str, col: str) -> str | None:
    """The text of the table cell at (row label ``row`` on ``line``, column ``col`` named in
    ``header``); None when the column cannot be found."""
    if "|" in line:
        return _pipe_cell(header, line, col)
    return _whitespace_cell(header, line, row, col)


def _row_problems(paper: str, raw: pd.DataFrame) -> list[str]:
    """Every claim of ``raw`` whose value is not printed in its stored source row: the row must carry
    the row label, and the value (with its std) must stand in the cited column, found under the
    stored column heads; in the tables of ``PROSE_TABLES`` it must stand on the row."""
    problems = []
    for index, claim in raw.iterrows():
        match = SOURCE.match(claim["source"])
        if not match or match["table"] != claim["table"]:
            problems.append(f"row {index + 2}: malformed source {claim['source']!r}")
            continue
        line, pattern = claim["source_row"], _value_pattern(claim["value"], claim["std"])
        printed = f"{claim['value']}±{claim['std'] or '∅'}"
        if match["row"] not in line:
            problems.append(f"row {index + 2}: row label {match['row']!r} not in its source row {line!r}")
        elif (paper, claim["table"]) in PROSE_TABLES:
            if not pattern.search(line):
                problems.append(f"row {index + 2}: {printed} not in its source row {line!r}")
        else:
            cell = _cited_cell(claim["source_header"], line, match["row"], match["col"])
            if cell is None:
                problems.append(f"row {index + 2}: column {match['col']!r} not in its source header "
                                f"{claim['source_header']!r}")
            elif not pattern.search(cell):
                problems.append(f"row {index + 2}: {printed} not in column {match['col']!r} of its source row "
                                f"(the cell reads {cell!r})")
    return problems


@pytest.mark.parametrize("paper", PAPERS)
def test_every_value_is_printed_in_its_source_row(paper: str) -> None:
    assert _row_problems(paper, raw_claims(paper)) == []


def test_a_value_in_the_wrong_column_is_caught() -> None:
    """Swapping AP-segm and PRO-segm on April-GAN Table 5's carpet row (both numbers are in the
    row) breaks exactly those two claims."""
    raw = raw_claims("april_gan")
    carpet = raw[(raw["table"] == "Table 5") & (raw["category"] == "carpet")]
    pair = carpet.set_index("metric").loc[["pixel_ap", "aupro"]]
    swapped = raw.copy()
    swapped.loc[carpet.index[carpet["metric"] == "pixel_ap"], "value"] = pair.loc["aupro", "value"]
    swapped.loc[carpet.index[carpet["metric"] == "aupro"], "value"] = pair.loc["pixel_ap", "value"]
    problems = _row_problems("april_gan", swapped.loc[carpet.index])
    assert len(problems) == 2 and all("not in column" in p for p in problems), problems


def test_a_value_on_the_wrong_row_is_caught() -> None:
    """A claim citing carpet but storing bottle's row (AGPNet Table 1, positional columns) fails."""
    raw = raw_claims("agpnet")
    table = raw[raw["table"] == "Table 1"]
    bottle = table[table["source_row"].str.startswith("Bottle ")].iloc[0]
    moved = table[table["source_row"].str.startswith("Cable ")].head(1).assign(source_row=bottle["source_row"])
    problems = _row_problems("agpnet", moved)
    assert len(problems) == 1 and "row label 'Cable' not in" in problems[0], problems


# Every disagreement that exists in the papers, with its explanation. A new disagreement (a
# transcription slip, or a newly added claim) fails the test until it is explained here. Each rule
# sees the disagreeing pair and all claims.
FIG5_OFFSET_CAP = 1.5  # points: SOWA's fig5 baseline markers vs the printed numbers (see the rule)
OTHER_BASELINE = {"winclip": "april_gan", "april_gan": "winclip"}


def _printed(claims: pd.DataFrame, row: pd.Series, **changes: object) -> pd.Series:
    """The printed (not digitized) values of the claim identity of ``row``, with ``changes``."""
    identity = {field: row[field] for field in ("dataset", "category", "method", "setting", "shots", "variant", "metric")}
    identity.update(changes)
    mask = ~claims["digitized"]
    for field, value in identity.items():
        mask &= claims[field] == value
    return claims.loc[mask, "value"]


def _agpnet_swaps_1_and_2_shot(row: pd.Series, claims: pd.DataFrame) -> bool:
    """AGPNet Table 10 prints SPADE/PaDiM/PatchCore's 1-shot numbers under 2-shot and vice versa
    (relative to April-GAN Table 3 and WinCLIP's table they both copy): AGPNet's K-shot value is
    April-GAN's (3 − K)-shot value."""
    if {row["paper_a"], row["paper_b"]} != {"april_gan", "agpnet"} or row["shots"] not in (1, 2):
        return False
    agpnet_value = row["value_a"] if row["paper_a"] == "agpnet" else row["value_b"]
    other_shot = _printed(claims[claims["paper"] == "april_gan"], row, shots=3 - row["shots"])
    return bool((other_shot == agpnet_value).any())


def _padim_std(row: pd.Series, claims: pd.DataFrame) -> bool:
    """PaDiM MVTec 4-shot image AUROC: SOWA prints 80.4±2.4, April-GAN 80.4±2.5."""
    return (row["method"] == "padim" and row["value_a"] == row["value_b"]
            and {row["std_a"], row["std_b"]} == {2.4, 2.5})


def _sowa_fig5_baselines(row: pd.Series, claims: pd.DataFrame) -> bool:
    """SOWA's fig5 baseline markers (digitized ±0.3) sit 0.4–1.2 points off (mostly below) the
    WinCLIP / April-GAN numbers their papers print: the figure plots other values than the printed
    ones. Accepted up to ``FIG5_OFFSET_CAP`` points."""
    return (row["table_a"] == "fig5" and row["digitized_a"] and not row["digitized_b"]
            and abs(row["value_a"] - row["value_b"]) <= FIG5_OFFSET_CAP)


def _fig5_merged_reading_is_the_other_baselines(row: pd.Series, claims: pd.DataFrame) -> bool:
    """Where the spec reads one 'merged' fig5 marker for both baselines, the reading can be the
    other baseline's alone: AS PRO MVTec-AD K=2 reads 88.8, WinCLIP prints 88.4, April-GAN 91.3 (its
    marker probably hidden under SOWA's, 91.9). Accepted when the reading is within
    ``FIG5_OFFSET_CAP`` of the other baseline's printed value."""
    if row["table_a"] != "fig5" or "merged markers" not in row["source_a"]:
        return False
    other = _printed(claims, row, method=OTHER_BASELINE[row["method"]])
    return bool(((other - row["value_a"]).abs() <= FIG5_OFFSET_CAP).any())


KNOWN_DISAGREEMENTS = (_agpnet_swaps_1_and_2_shot, _padim_std, _sowa_fig5_baselines,
                       _fig5_merged_reading_is_the_other_baselines)


def test_cross_paper_disagreements_are_all_known_and_listed() -> None:
    claims = load_claims()
    found = disagreements(claims)
    def printed(paper: str, table: str, value: float, std: float) -> str:
        return f"{paper} {table} {value}" + ("" if pd.isna(std) else f"±{std}")

    listing = "\n".join(
        f"{r.method} {r.dataset}/{r.category} {r.setting} K={r.shots} {r.metric}: "
        f"{printed(r.paper_a, r.table_a, r.value_a, r.std_a)} vs {printed(r.paper_b, r.table_b, r.value_b, r.std_b)}"
        for r in found.itertuples())
    warnings.warn(f"{len(found)} cross-paper disagreements in the printed claims:\n{listing}", stacklevel=1)
    explained = found.apply(lambda r: [rule.__name__ for rule in KNOWN_DISAGREEMENTS if rule(r, claims)], axis=1)
    assert explained.map(len).gt(0).all(), found[explained.map(len) == 0].to_string()
    assert {name for names in explained for name in names} == {rule.__name__ for rule in KNOWN_DISAGREEMENTS}


def test_disagreement_rules_are_narrow() -> None:
    """A fig5 offset beyond the cap, or an AGPNet 1/2-shot value that is not April-GAN's other-shot
    value, stays unexplained."""
    claims = load_claims()
    found = disagreements(claims)
    fig5 = found[(found["table_a"] == "fig5") & ~found["source_a"].str.contains("merged markers")].iloc[0].copy()
    fig5["value_a"] = fig5["value_b"] - FIG5_OFFSET_CAP - 0.1
    agpnet = found[(found["paper_a"] == "april_gan") & (found["paper_b"] == "agpnet")].iloc[0].copy()
    agpnet["value_b"] += 0.1
    for row in (fig5, agpnet):
        assert not any(rule(row, claims) for rule in KNOWN_DISAGREEMENTS), row.to_dict()


def test_claims_printed_by_several_papers_are_compared() -> None:
    """WinCLIP+ 4-shot image AUROC on MVTec-AD is printed by all four sources, identically."""
    claims = load_claims()
    same = claims[(claims["method"] == "winclip") & (claims["dataset"] == "mvtec") & (claims["shots"] == 4)
                  & (claims["metric"] == "image_auroc") & (claims["category"] == "mean")]
    assert set(same["paper"]) == set(PAPERS)
    assert set(same["value"]) == {95.2}
    assert disagreements(same).empty
