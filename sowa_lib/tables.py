"""The papers' tables rebuilt from the results store: ``claimed | reproduced | Δ`` (issue 6, "Tables").

Every paper table (and digitized figure) with claims in :mod:`sowa_lib.claims` has a layout in
``LAYOUTS``; :func:`build_table` fills it from a results frame (:func:`sowa_lib.runs.load_results`)
and :func:`build_all` writes every table plus a summary as CSV, Markdown and LaTeX.

How a claim is matched to results (:func:`compare`):

- Same ``method``, ``metric`` and ``variant`` (``default`` for the default configuration; an
  ablation claim matches only runs whose variant is the claim's variant string, e.g.
  ``backbone=clip_vit_b``, so ablations nobody ran count as not run).
- Same ``dataset``, ``setting`` and ``shots``, except where the claim leaves them open: an empty
  dataset (AGPNet's efficiency table names none), a setting that is not a run setting
  (``ablation``, ``efficiency``, ``leaderboard``) or empty shots (full-data multi-/one-class,
  efficiency) match any value, and the seed's values are averaged over them.
- ``category``: a category id matches that category; ``mean`` (and empty) matches the
  unweighted mean over the dataset's full category set (:func:`sowa_lib.data.full_category_set`,
  the set the papers average over) of each (dataset, method, variant, setting, shots, seed). It is
  NaN when any of those categories is missing or NaN: a mean over a subset would not be the
  paper's; the caption says ``k/n categories`` for such means.
- The demo profile maps the datasets whose roles its benchmark plays (``profiles.DATASET_ROLES``).

Reproduced = mean ± sample std (ddof=1) over seeds with a finite value, in the claim's unit: quality
metrics in percent (the store keeps fractions), except the VAND leaderboards, which print fractions.
A cell is flagged when |Δ| exceeds its tolerance (:func:`tolerance`): the claim's std, but at least
one point for percentages (0.01 on the leaderboards' fraction scale) and 10 % of the claimed value
for fps / params / GFLOPs. A claim is ``within``, ``outside``, ``not_run`` (no finite reproduced
value: no completed run, or the metric was undefined) or ``no_producer`` (nothing in this study
produces that number yet, :func:`has_producer`; tables are built only from completed runs).

Files (:func:`write_table`): ``<table>.csv`` is tidy, one row per claim (:data:`TIDY_COLUMNS`, the
profile in every row), loadable by ``pd.read_csv`` with no options; ``.md`` and ``.tex`` render the
paper's shape with ``claimed | reproduced | Δ`` cells, the banner and the caption, metrics and
datasets named in the papers' words (a demo dataset as ``demo_a (stands in for MVTec-AD)``).
"""
from __future__ import annotations

import textwrap
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from sowa_lib.ablations import CLAIM_RUNS
from sowa_lib.claims import load_claims
from sowa_lib.data import full_category_set
from sowa_lib.profiles import dataset_for_role
from sowa_lib.vocabulary import DATASET_LABELS, EFFICIENCY_METRICS, METHODS, METRIC_HEADS, QUALITY_METRICS, RUN_SETTINGS

DEMO_BANNER = ("DEMO PROFILE — numbers come from the embedded demo benchmark and tiny randomly initialised "
               "models; they are NOT comparable with the paper's claims.")
PAPER_BANNER = "PAPER PROFILE — reproduced on the official datasets with pretrained weights."
SMOKE_BANNER = ("SMOKE PROFILE — smoke: random weights, fabricated data — not paper numbers. The paper profile's code "
                "path on fabricated datasets with randomly initialised real architectures; it proves the path runs, nothing more.")
# The demo benchmark's two groups of generated categories play the roles of MVTec-AD and VisA.
MISSING = "–"
FLAG = "(!)"
MIN_TOLERANCE = 1.0  # points, for metrics printed in percent (and fig8's gains, also in points)
LEADERBOARD_TOLERANCE = MIN_TOLERANCE / 100  # the same point on the VAND leaderboards' 0-1 scale
EFFICIENCY_RELATIVE_TOLERANCE = 0.10  # fps / params / GFLOPs depend on the hardware: 10 % of the claim
TOLERANCE_RULE = (f"|Δ| > max(claimed std, floor); floor = {MIN_TOLERANCE} point for percentages, "
                  f"{LEADERBOARD_TOLERANCE} for the VAND leaderboards' fractions, "
                  f"{EFFICIENCY_RELATIVE_TOLERANCE:.0%} of the claimed value for fps / params / GFLOPs")
STD_DDOF = 1
MATCH_FIELDS = ["dataset", "category", "method", "variant", "setting", "shots", "metric"]
STATUSES = ("within", "outside", "not_run", "no_producer", "other_device")
#: Metrics that depend on the device: the papers measured them on GPUs, so a value measured elsewhere
#: is shown (marked "(CPU)") but never judged against the claim (status ``other_device``).
DEVICE_METRICS = ("fps",)
# SOWA fig8's defect-size bins are claim variants ``area<0.5%`` ...: no run stores per-bin metrics
# (figures.size_bin_metrics computes them for the figure only).
SIZE_BIN_PREFIX = "area"
NO_PRODUCER_NOTE = ("no_producer = nothing in this study produces the number yet: competitors it does not "
                    "implement, the VAND leaderboards (hidden test labels) and fig8's defect-size bins and gains; "
                    "other_device = fps measured on another device than the paper's GPU (shown, not judged)")


#: Columns of the per-table CSV files: one row per claim. ``dataset`` is where the reproduced numbers
#: come from (the demo dataset playing the role), ``claimed_dataset`` the paper's.
TIDY_COLUMNS = ["paper", "table", "method", "dataset", "claimed_dataset", "category", "setting", "shots", "variant", "metric",
                "claimed", "claimed_std", "reproduced", "reproduced_std", "n_seeds", "delta", "status", "profile"]
#: Tables with more columns than this are scaled to the text width in LaTeX.
LATEX_MAX_COLUMNS = 4


def dataset_label(dataset: str, profile: str) -> str:
    """Paper dataset ``dataset`` as the tables of ``profile`` name it: ``MVTec-AD``, or in the demo
    ``demo_a (stands in for MVTec-AD)``."""
    name = DATASET_LABELS.get(dataset, dataset)
    shown = dataset_for_role(profile, dataset)
    return name if shown == dataset else f"{shown} (stands in for {name})"


@dataclass(frozen=True)
class Layout:
    """A paper table's shape: which claim fields index its rows and its columns."""

    paper: str
    table: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    title: str


def _layouts() -> dict[str, Layout]:
    specs = [
        ("sowa", "readme_table_1", ("metric", "dataset"), ("method",), "Few-shot (K=4) comparison on five datasets (README)"),
        ("sowa", "readme_table_2", ("method",), ("dataset", "metric"), "K=4 comparison on MVTec-AD and VisA (README)"),
        ("sowa", "fig5", ("metric", "dataset"), ("method", "setting", "shots"), "Few-shot curves, digitized (fig5)"),
        ("sowa", "fig8a", ("variant",), ("metric", "setting", "shots"), "SOWA by defect area, digitized (fig8a)"),
        ("sowa", "fig8b", ("variant",), ("metric", "method"), "Zero-shot by defect area, digitized (fig8b)"),
        ("sowa", "fig8c", ("variant",), ("metric", "method"), "Gain 0->4-shot by defect area, digitized (fig8c)"),
        ("sowa", "fig9", ("dataset",), ("method",), "Inference speed, images/s (fig9)"),
        ("april_gan", "Table 1", ("method",), ("metric",), "VAND 2023 zero-shot leaderboard"),
        ("april_gan", "Table 2", ("method",), ("metric",), "VAND 2023 few-shot leaderboard"),
        ("april_gan", "Table 3", ("setting", "shots", "method"), ("metric",), "Comparison on MVTec-AD"),
        ("april_gan", "Table 4", ("setting", "shots", "method"), ("metric",), "Comparison on VisA"),
        *[("april_gan", f"Table {n}", ("category",), ("metric",), f"{ds} {k} per category")
          for n, ds, k in [(5, "MVTec-AD", "zero-shot"), (6, "MVTec-AD", "1-shot"), (7, "MVTec-AD", "2-shot"),
                           (8, "MVTec-AD", "4-shot"), (9, "VisA", "zero-shot"), (10, "VisA", "1-shot"),
                           (11, "VisA", "2-shot"), (12, "VisA", "4-shot")]],
        ("winclip", "abstract", ("dataset",), ("setting", "shots", "metric"), "Abstract: zero-shot and 1-shot AUROC"),
        ("winclip", "pwc_benchmark", ("dataset", "setting", "shots"), ("metric",), "Benchmark results: detection AUROC"),
        ("agpnet", "Table 1", ("category",), ("method", "metric"), "MVTec-AD multi-class per category"),
        ("agpnet", "Table 2", ("category",), ("method", "metric"), "MVTec-AD one-class per category"),
        ("agpnet", "Table 3", ("category",), ("method", "metric"), "VisA multi-class per category"),
        ("agpnet", "Table 4", ("metric",), ("method",), "MVTec-3D (RGB) multi-class"),
        ("agpnet", "Table 5", ("metric",), ("variant",), "Ablation: noise type"),
        ("agpnet", "Table 6", ("variant", "method"), ("metric",), "Ablation: backbone"),
        ("agpnet", "Table 7", ("metric",), ("variant",), "Ablation: noise intensity and attention map"),
        ("agpnet", "Table 8", ("metric",), ("variant",), "Ablation: multi-layer features and mean teacher"),
        ("agpnet", "Table 9", ("method",), ("metric",), "Efficiency"),
        ("agpnet", "Table 10", ("method",), ("shots", "metric"), "Few-shot MVTec-AD"),
    ]
    return {table_id(paper, table): Layout(paper, table, rows, cols, title) for paper, table, rows, cols, title in specs}


def table_id(paper: str, table: str) -> str:
    """File-safe id of a paper table, e.g. ``april_gan_table_3``."""
    return f"{paper}_{table.lower().replace(' ', '_')}"


LAYOUTS = _layouts()
TABLE_IDS = tuple(LAYOUTS)


def banner(profile: str) -> str:
    """The line printed above every table of ``profile``."""
    if profile == "demo":
        return DEMO_BANNER
    if profile == "paper":
        return PAPER_BANNER
    if profile == "smoke":
        return SMOKE_BANNER
    return f"{profile.upper()} PROFILE"


# ---------------------------------------------------------------- reproduced values

def _seed_level(results_df: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Per-seed values in claim units: per category plus the category ``mean`` rows
    (:func:`_category_means`); ``stale`` marks runs kept although stale (``reuse_stale``)."""
    results = results_df
    if "profile" in results.columns:
        results = results[results["profile"] == profile]
    results = results[results["category"] != "mean"]
    scale = np.where(results["metric"].isin(QUALITY_METRICS), 100.0, 1.0)
    stale = results["stale"].eq(True) if "stale" in results.columns else False
    gpu = results["device"].astype(str).str.startswith("cuda") if "device" in results.columns else False
    per_cat = results[MATCH_FIELDS + ["seed"]].assign(
        value=results["value"].astype(float) * scale, shots=results["shots"].astype("Int64"), stale=stale, gpu=gpu)
    return pd.concat([per_cat, _category_means(per_cat)], ignore_index=True)


def _category_means(per_cat: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method, variant, setting, shots, metric, seed) the unweighted mean over the
    dataset's full category set (all categories found, for a dataset with no known set); NaN when a
    category is missing or NaN. ``coverage`` = ``k/n`` categories run, ``complete`` whether k = n.
    Efficiency metrics (speed at the method's resolution, parameters) do not depend on the category:
    their mean is over the categories measured."""
    full = {d: full_category_set(d) for d in per_cat["dataset"].unique()}
    in_set = [full[d] is None or c in full[d] for d, c in zip(per_cat["dataset"], per_cat["category"])]
    part = per_cat.loc[pd.Series(in_set, index=per_cat.index, dtype=bool)]
    group = [f for f in MATCH_FIELDS if f != "category"] + ["seed"]
    means = (part.assign(_nan=part["value"].isna())
             .groupby(group, dropna=False)
             .agg(value=("value", "mean"), _nan=("_nan", "any"), _n=("category", "nunique"), stale=("stale", "any"),
                  gpu=("gpu", "all"))
             .reset_index())
    expected = [len(full[d]) if full[d] else n for d, n in zip(means["dataset"], means["_n"])]
    complete = (means["_n"].to_numpy() >= np.array(expected, dtype=int)) | means["metric"].isin(EFFICIENCY_METRICS).to_numpy()
    return means.assign(value=means["value"].where(~means["_nan"] & complete), category="mean", complete=complete,
                        coverage=[f"{n}/{e}" for n, e in zip(means["_n"], expected)]).drop(columns=["_nan", "_n"])


#: ``{id(seeds): {keys: stats}}`` for the per-seed frames alive (:func:`_over_seeds`): building the
#: tables asks the same few groupings of one frame dozens of times (the demo's: 37 asks, 5 distinct),
#: and each grouping's std runs per group in Python. An entry goes with its frame.
_SEED_STATS: dict[int, dict[tuple[str, ...], pd.DataFrame]] = {}


def _over_seeds(seeds: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, sample std, population std (ddof=0, sowa spec §3.3 logs both) and count over seeds,
    after averaging each seed over the fields not in ``keys``; ``on_gpu``: every value measured on a GPU.
    Computed once per grouping of a frame (``seeds`` is never modified in place here)."""
    memo = _SEED_STATS.get(id(seeds))
    if memo is None:
        memo = _SEED_STATS[id(seeds)] = {}
        weakref.finalize(seeds, _SEED_STATS.pop, id(seeds), None)
    if tuple(keys) not in memo:
        per_seed = seeds.groupby(keys + ["seed"], dropna=False).agg(value=("value", "mean"), gpu=("gpu", "all")).reset_index()
        stats = per_seed.groupby(keys, dropna=False).agg(
            reproduced=("value", "mean"), reproduced_std=("value", lambda s: s.std(ddof=STD_DDOF)),
            reproduced_std_ddof0=("value", lambda s: s.std(ddof=0)), n_seeds=("value", "count"), on_gpu=("gpu", "all"))
        memo[tuple(keys)] = stats.reset_index()
    return memo[tuple(keys)].copy()


def _match_frame(frame: pd.DataFrame, profile: str) -> pd.DataFrame:
    """``frame``'s match fields as looked up in the results: the profile's dataset for each paper
    dataset, ``mean`` for the category mean, and a paper's ablation claims in the setting its
    ablations ran in, with claims of its default configuration answered by the default runs
    (:data:`sowa_lib.ablations.CLAIM_RUNS`)."""
    ablation = frame["setting"] == "ablation"
    setting, variant = frame["setting"].copy(), frame["variant"].copy()
    for method, rule in CLAIM_RUNS.items():
        rows = ablation & (frame["method"] == method)
        setting[rows] = rule["setting"]
        variant[rows & frame["variant"].isin(rule["default_variants"])] = "default"
    return frame[MATCH_FIELDS].assign(
        dataset=frame["dataset"].map(lambda d: dataset_for_role(profile, d)),
        category=frame["category"].replace("", "mean"),
        shots=frame["shots"].astype("Int64"),
        setting=setting,
        variant=variant,
    )


def _attach_reproduced(frame: pd.DataFrame, seeds: pd.DataFrame, profile: str) -> pd.DataFrame:
    """``frame`` plus ``reproduced``, ``reproduced_std`` and ``n_seeds`` (see the module docstring)."""
    keyed = _match_frame(frame, profile).reset_index(drop=True)
    open_fields = pd.DataFrame({
        "dataset": keyed["dataset"] == "",
        "setting": ~keyed["setting"].isin(RUN_SETTINGS),
        "shots": keyed["shots"].isna(),
    })
    parts = []
    for pattern, part in keyed.groupby([open_fields[c] for c in open_fields.columns]):
        is_open = dict(zip(open_fields.columns, pattern))
        keys = [f for f in MATCH_FIELDS if not is_open.get(f, False)]
        stats = _over_seeds(seeds, keys)
        parts.append(part.reset_index().merge(stats, on=keys, how="left").set_index("index"))
    stats_cols = ["reproduced", "reproduced_std", "reproduced_std_ddof0", "n_seeds", "on_gpu"]
    found = pd.concat(parts).reindex(range(len(keyed)))[stats_cols] if parts else pd.DataFrame(columns=stats_cols)
    out = frame.reset_index(drop=True).assign(**{c: found[c].to_numpy() for c in stats_cols})
    return out.assign(n_seeds=out["n_seeds"].fillna(0).astype(int), on_gpu=out["on_gpu"].eq(True))


def tolerance(claims: pd.DataFrame) -> pd.Series:
    """The |Δ| each claim allows (module docstring, ``TOLERANCE_RULE``), in the claim's unit."""
    floor = np.select(
        [claims["setting"] == "leaderboard", claims["metric"].isin(EFFICIENCY_METRICS)],
        [LEADERBOARD_TOLERANCE, EFFICIENCY_RELATIVE_TOLERANCE * claims["value"].abs()], MIN_TOLERANCE)
    return pd.Series(np.fmax(claims["std"].to_numpy(dtype=float), floor), index=claims.index)


def has_producer(claims: pd.DataFrame) -> pd.Series:
    """Whether a run of this study can produce each claim (``NO_PRODUCER_NOTE`` lists what cannot):
    a method the study implements, a quality metric the runs store or an efficiency metric the speed
    runs store (:func:`sowa_lib.speed.speed_run`), not the VAND test set, not a defect-size bin."""
    return (claims["method"].isin(METHODS) & claims["metric"].isin(QUALITY_METRICS + EFFICIENCY_METRICS)
            & (claims["dataset"] != "vand2023") & ~claims["variant"].str.startswith(SIZE_BIN_PREFIX))


def _in_claim_unit(out: pd.DataFrame) -> pd.DataFrame:
    """The VAND leaderboards print F1-max as a fraction; the reproduced percentages follow."""
    fraction = (out["setting"] == "leaderboard") & out["metric"].isin(QUALITY_METRICS)
    scale = np.where(fraction, 0.01, 1.0)
    return out.assign(**{c: out[c] * scale for c in ("reproduced", "reproduced_std", "reproduced_std_ddof0")})


def _compared(frame: pd.DataFrame, seeds: pd.DataFrame, profile: str) -> pd.DataFrame:
    """``frame`` (claims, or table cells with NaN ``value`` where nothing is printed) judged against
    the per-seed results: reproduced stats plus ``delta`` (claim's unit), ``tolerance`` and ``status``."""
    out = _in_claim_unit(_attach_reproduced(frame, seeds, profile))
    other_device = out["metric"].isin(DEVICE_METRICS) & out["reproduced"].notna() & ~out["on_gpu"]
    delta = (out["reproduced"] - out["value"]).where(~other_device)
    allowed = tolerance(out)
    status = np.select([other_device, delta.abs() > allowed, delta.notna(), has_producer(out)],
                       ["other_device", "outside", "within", "not_run"], "no_producer")
    return out.assign(delta=delta, tolerance=allowed, status=status)


def compare(results_df: pd.DataFrame, profile: str, claims: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every claim with ``reproduced``, ``reproduced_std`` (ddof=1), ``reproduced_std_ddof0``, ``n_seeds``,
    ``delta``, ``tolerance``, ``status``."""
    claims = load_claims() if claims is None else claims
    return _compared(claims, _seed_level(results_df, profile), profile)


# ---------------------------------------------------------------- cells and table shapes

def _decimals(metric: str, setting: str) -> int:
    """Printed precision: VAND leaderboard fractions 4, efficiency 2, percentages 1."""
    if setting == "leaderboard":
        return 4
    return 2 if metric in EFFICIENCY_METRICS else 1


def _cell(row: Any) -> str:
    """``claimed | reproduced | Δ`` for one compared row (a named tuple), flagged when outside tolerance."""
    d = _decimals(row.metric, row.setting)
    if pd.isna(row.value):
        claimed = MISSING
    else:
        claimed = ("≈" if row.digitized else "") + f"{row.value:.{d}f}"
        claimed += f"±{row.std:.{d}f}" if pd.notna(row.std) else ""
    if pd.isna(row.reproduced):
        reproduced = MISSING
    else:
        reproduced = f"{row.reproduced:.{d}f}"
        reproduced += f"±{row.reproduced_std:.{d}f}" if row.n_seeds > 1 else ""
        reproduced += " (CPU)" if row.status == "other_device" else ""
    delta = MISSING if pd.isna(row.delta) else f"{row.delta:+.{d}f}"
    flag = f" {FLAG}" if row.status == "outside" else ""
    return f"{claimed} | {reproduced} | {delta}{flag}"


def _merged_order(sequences: Iterable[list]) -> list:
    """All items of ``sequences`` in one order: each new item goes right after its predecessor in
    the sequence that introduces it, so a row that lacks a column does not push it to the end."""
    order: list = []
    for sequence in sequences:
        position = 0
        for item in sequence:
            if item in order:
                position = order.index(item) + 1
            else:
                order.insert(position, item)
                position += 1
    return order


def _label(field: str, value: object, profile: str) -> str:
    """A row or column key as printed: metrics and datasets in the papers' words (:func:`dataset_label`)."""
    if pd.isna(value):
        return ""
    if field == "metric":
        return METRIC_HEADS.get(str(value), str(value))
    if field == "dataset" and value:
        return dataset_label(str(value), profile)
    return str(value)


def _grid(claims: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """Every (row, column) cell of the table's shape with its claim (NaN value where none printed)."""
    rows = list(dict.fromkeys(claims[list(layout.rows)].itertuples(index=False, name=None)))
    per_row = claims.groupby(list(layout.rows), sort=False, dropna=False)
    cols = _merged_order(list(g[list(layout.cols)].itertuples(index=False, name=None)) for _, g in per_row)
    constants = {f: claims[f].iloc[0] for f in MATCH_FIELDS if f not in layout.rows + layout.cols}
    varying = [f for f in constants if claims[f].astype("string").fillna("").nunique() > 1]
    if varying:
        raise ValueError(f"{layout.paper} {layout.table}: {varying} vary but index neither rows nor columns")
    cells = [{**constants, **dict(zip(layout.rows, r)), **dict(zip(layout.cols, c)), "_row": i, "_col": j}
             for i, r in enumerate(rows) for j, c in enumerate(cols)]
    grid = pd.DataFrame(cells).astype({"shots": "Int64"})
    cells = grid.merge(claims, on=MATCH_FIELDS, how="left").sort_values(["_row", "_col"])
    return cells.assign(digitized=cells["digitized"].eq(True))


def _caption(layout: Layout, claimed: pd.DataFrame, seeds: pd.DataFrame, profile: str) -> str:
    """Title, cell legend, how many of the table's claims (``claimed``: compared rows) lack a run,
    which category means are incomplete, and whether stale runs were kept."""
    counts = claimed["status"].value_counts()
    return (f"{layout.paper} {layout.table}: {layout.title}. Cells: claimed | reproduced (mean ± sample std over "
            f"seeds, ddof={STD_DDOF}) | Δ = reproduced − claimed, in the claim's unit. {FLAG} marks {TOLERANCE_RULE}; "
            f"{MISSING} = not printed / not run; ≈ = digitized from a figure. Category means are unweighted over "
            f"the paper's full category set, per seed. Built only from completed runs: of {len(claimed)} claims, "
            f"{counts.get('not_run', 0)} not run yet, {counts.get('no_producer', 0)} with no producer in the study "
            "yet." + _device_note(counts.get("other_device", 0)) + _coverage_note(claimed, seeds, profile) + stale_note(seeds))


def _device_note(count: int) -> str:
    return (f" {count} speed claim(s) measured here on another device than the paper's GPU: shown with (CPU), "
            "not judged." if count else "")


def _coverage_note(claimed: pd.DataFrame, seeds: pd.DataFrame, profile: str) -> str:
    """`` Mean rows show – where runs cover k/n categories: ...`` for the table's incomplete means."""
    means = _match_frame(claimed, profile)
    means = means[means["category"] == "mean"]
    keys = ["dataset", "method", "variant", "setting"]
    partial = seeds[(seeds["category"] == "mean") & seeds["complete"].eq(False)]
    found = means[keys].drop_duplicates().merge(partial[keys + ["coverage"]].drop_duplicates(), on=keys)
    if found.empty:
        return ""
    listed = sorted({f"{d} {m}/{v}/{s}: {c}" for d, m, v, s, c in found.itertuples(index=False, name=None)})
    return (f" Mean rows show {MISSING} where runs cover only k/n of the paper's categories ("
            + "; ".join(listed) + " categories).")


def stale_note(seeds: pd.DataFrame) -> str:
    """`` N runs were reused although stale ...`` when the results hold runs kept by ``reuse_stale``."""
    stale = seeds[(seeds["category"] != "mean") & seeds["stale"].eq(True)]
    n = len(stale.drop_duplicates([f for f in MATCH_FIELDS if f != "metric"] + ["seed"]))
    if not n:
        return ""
    return (f" {n} run(s) were reused although what computed them changed since (--reuse-stale / SOWA_REUSE_STALE): "
            "rerun without it to recompute them.")


def _tidy(compared: pd.DataFrame, profile: str) -> pd.DataFrame:
    """One row per claim of ``compared`` in :data:`TIDY_COLUMNS`, for ``pd.read_csv`` and programs."""
    claimed = compared[compared["value"].notna()].reset_index(drop=True)
    keyed = _match_frame(claimed, profile).reset_index(drop=True)
    return pd.DataFrame({
        **{c: claimed[c] for c in ("paper", "table", "method")},
        "dataset": keyed["dataset"], "claimed_dataset": claimed["dataset"], "category": keyed["category"],
        **{c: claimed[c] for c in ("setting", "shots", "variant", "metric")},
        "claimed": claimed["value"], "claimed_std": claimed["std"],
        **{c: claimed[c] for c in ("reproduced", "reproduced_std", "n_seeds", "delta", "status")},
        "profile": profile,
    }, columns=TIDY_COLUMNS)


def _shape(layout: Layout, claims: pd.DataFrame, seeds: pd.DataFrame, profile: str) -> pd.DataFrame:
    """The table of ``layout`` filled from ``claims`` and the per-seed results ``seeds``; ``attrs``
    hold the caption, the banner and the tidy rows (:func:`_tidy`)."""
    mine = claims[(claims["paper"] == layout.paper) & (claims["table"] == layout.table)]
    compared = _compared(_grid(mine, layout), seeds, profile)
    compared["cell"] = [_cell(row) for row in compared.itertuples(index=False)]
    compared["column"] = [" / ".join(_label(f, v, profile) for f, v in zip(layout.cols, key))
                          for key in compared[list(layout.cols)].itertuples(index=False, name=None)]
    shaped = compared.pivot(index="_row", columns="_col", values="cell")
    col_names = compared.drop_duplicates("_col").set_index("_col")["column"]
    row_keys = compared.drop_duplicates("_row").set_index("_row")[list(layout.rows)]
    row_keys = row_keys.apply(lambda column: column.map(lambda v: _label(column.name, v, profile)))
    out = pd.concat([row_keys, shaped.rename(columns=col_names)], axis=1).reset_index(drop=True)
    out.columns.name = None
    claimed = compared[compared["value"].notna()]
    caption = _caption(layout, claimed, seeds, profile)
    out.attrs.update(table_id=table_id(layout.paper, layout.table), caption=caption, banner=banner(profile),
                     tidy=_tidy(compared, profile))
    return out


def build_table(table: str, results_df: pd.DataFrame, profile: str, claims: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table ``table`` (an id in ``TABLE_IDS``) in the paper's shape; ``attrs`` hold caption and banner."""
    layout = LAYOUTS[table]
    claims = load_claims(layout.paper) if claims is None else claims
    return _shape(layout, claims, _seed_level(results_df, profile), profile)


def summary_table(results_df: pd.DataFrame, profile: str, claims: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per paper: how many claims were reproduced within tolerance, outside it, not run, or have no
    producer in the study."""
    claims = load_claims() if claims is None else claims
    seeds = _seed_level(results_df, profile)
    return _summary(_compared(claims, seeds, profile), profile, stale_note(seeds))


def _summary(compared: pd.DataFrame, profile: str, note: str = "") -> pd.DataFrame:
    """:func:`summary_table` of claims already judged (:func:`compare`)."""
    counts = pd.crosstab(compared["paper"], compared["status"]).reindex(columns=list(STATUSES), fill_value=0)
    counts = counts.reindex(list(dict.fromkeys(compared["paper"])))
    counts.loc["total"] = counts.sum()
    out = counts.assign(claims=counts.sum(axis=1))[["claims", *STATUSES]].reset_index()
    out.columns.name = None
    total = counts.loc["total"]
    out.attrs.update(table_id="summary", banner=banner(profile), tidy=out.assign(profile=profile), caption=(
        f"Claims per paper reproduced within tolerance, outside it ({TOLERANCE_RULE}), not run (no completed "
        f"run with a finite value), or with no producer ({NO_PRODUCER_NOTE}). Reproduced = mean over seeds. "
        f"Tables are built only from completed runs: {total['not_run']} of {total.sum()} claims are not run yet, "
        f"{total['no_producer']} have no producer in the study yet. Category means use the paper's full "
        f"category set; a claim on a mean with categories not run counts as not run." + note))
    return out


# ---------------------------------------------------------------- writing

_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"\textbar{}", "±": r"$\pm$",
          "≈": r"$\approx$", "–": "--", "—": "---", "−": "-", "Δ": r"$\Delta$", "≤": r"$\le$", "<": r"$<$",
          ">": r"$>$", "≥": r"$\ge$"}


def _latex_escape(text: object) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def to_markdown(table: pd.DataFrame) -> str:
    """Banner, caption and a pipe table (``|`` inside cells escaped)."""
    def line(values: Iterable[object]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    body = [line(table.columns), line(["---"] * len(table.columns)), *(line(r) for r in table.itertuples(index=False))]
    return f"> **{table.attrs['banner']}**\n\n{table.attrs['caption']}\n\n" + "\n".join(body) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """A ``table`` environment whose caption carries the banner; a table wider than
    :data:`LATEX_MAX_COLUMNS` columns is scaled to the text width (``\\resizebox``: the document
    needs ``\\usepackage{graphicx}``), and every source line stays short (one cell per line)."""
    def row(values: Iterable[object]) -> list[str]:
        cells = [_latex_escape(v) for v in values]
        return [f"  {cell} &" for cell in cells[:-1]] + [f"  {cells[-1]} " + r"\\"]

    caption = _latex_escape(table.attrs["caption"]) + r" \textbf{" + _latex_escape(table.attrs["banner"]) + "}"
    tabular = [r"\begin{tabular}{" + "l" * len(table.columns) + "}", r"\hline", *row(table.columns), r"\hline",
               *(line for r in table.itertuples(index=False) for line in row(r)), r"\hline", r"\end{tabular}"]
    if len(table.columns) > LATEX_MAX_COLUMNS:
        tabular = [r"\resizebox{\linewidth}{!}{%", *tabular, "}"]
    return "\n".join([
        r"\begin{table}[htbp]", r"\centering", r"\caption{%", *textwrap.wrap(caption, 100, break_long_words=False), "}",
        *tabular, r"\end{table}", "",
    ])


def write_table(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write ``table`` as ``<table_id>.csv`` (its tidy rows, ``attrs["tidy"]``, when it has them),
    ``.md`` and ``.tex`` (banner and caption above the paper's shape)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / table.attrs["table_id"]
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    table.attrs.get("tidy", table).to_csv(paths[0], index=False)
    paths[1].write_text(to_markdown(table))
    paths[2].write_text(to_latex(table))
    return paths


def build_all(results_df: pd.DataFrame, profile: str, out_dir: Path) -> list[Path]:
    """Write every table in ``TABLE_IDS``, the summary, and ``claims_vs_reproduced.csv`` (every claim
    in long format beside its reproduced statistics, :func:`compare`) under ``out_dir``
    (``results/<profile>/tables``)."""
    claims, seeds = load_claims(), _seed_level(results_df, profile)
    paths = [p for layout in LAYOUTS.values() for p in write_table(_shape(layout, claims, seeds, profile), out_dir)]
    compared = _compared(claims, seeds, profile)
    long_format = Path(out_dir) / "claims_vs_reproduced.csv"
    compared.assign(profile=profile).to_csv(long_format, index=False)
    return paths + write_table(_summary(compared, profile, stale_note(seeds)), out_dir) + [long_format]


__all__ = [
    "DEMO_BANNER", "EFFICIENCY_RELATIVE_TOLERANCE", "FLAG", "LAYOUTS", "LEADERBOARD_TOLERANCE", "Layout", "MISSING",
    "MIN_TOLERANCE", "PAPER_BANNER", "SMOKE_BANNER", "STATUSES", "TABLE_IDS", "banner", "build_all", "build_table", "compare",
    "has_producer", "summary_table", "table_id", "to_latex", "to_markdown", "tolerance", "write_table",
]


# ---------------------------------------------------------------- study overview (no claims)

OVERVIEW_KEYS = ["method", "variant", "setting", "dataset", "shots"]


def category_means(results_df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, variant, setting, dataset, K, seed, metric) the unweighted mean over categories,
    in percent for quality metrics (NaN when any category is undefined), for one profile's results."""
    profiles = results_df["profile"].unique()
    if len(profiles) != 1:
        raise ValueError(f"want the results of one profile, got {list(profiles)}")
    seeds = _seed_level(results_df, profiles[0])
    return seeds[seeds["category"] == "mean"].reset_index(drop=True)


def overview(results_df: pd.DataFrame) -> pd.DataFrame:
    """This study's own results at a glance: one row per (method, variant, setting, dataset, K),
    the seven quality metrics in percent as ``mean ± std`` over seeds of the category means
    (std with ddof = 1, shown when there are several seeds; NaN means undefined, see the store)."""
    means = category_means(results_df)
    stats = _over_seeds(means[means["metric"].isin(QUALITY_METRICS)], OVERVIEW_KEYS + ["metric"])  # speed runs apart
    text = [f"{m:.1f}" if n < 2 or pd.isna(s) else f"{m:.1f} ± {s:.1f}"
            for m, s, n in zip(stats["reproduced"], stats["reproduced_std"], stats["n_seeds"])]
    table = stats.assign(cell=text).pivot(index=OVERVIEW_KEYS, columns="metric", values="cell")
    return table[[m for m in QUALITY_METRICS if m in table.columns]]


def variant_effects(results_df: pd.DataFrame, metrics: Sequence[str] = ("image_auroc", "pixel_auroc", "aupro")) -> pd.DataFrame:
    """Each non-default variant beside the default of the same (method, setting, dataset, K): the
    category mean averaged over seeds, in percent, and the difference ``Δ = variant − default``.
    Variants whose default was not run are left out."""
    means = category_means(results_df)
    stats = _over_seeds(means[means["metric"].isin(metrics)], OVERVIEW_KEYS + ["metric"])
    keys = ["method", "setting", "dataset", "shots", "metric"]
    default = stats[stats["variant"] == "default"][keys + ["reproduced"]].rename(columns={"reproduced": "default"})
    joined = stats[stats["variant"] != "default"].merge(default, on=keys)
    joined = joined.assign(delta=joined["reproduced"] - joined["default"])
    table = joined.pivot(index=["method", "variant", "setting", "dataset", "shots"], columns="metric", values="delta")
    return table[[m for m in metrics if m in table.columns]].round(1)


def beside_claim(paper: str, table: str, method: str, metric: str, measured: float) -> pd.DataFrame:
    """One measured value (e.g. AGPNet's learnable parameters in millions from
    :func:`sowa_lib.methods.agpnet.learnable_parameters`) beside the paper's claim of it: one row per
    matching claim with ``claimed``, ``measured`` and ``delta``."""
    claims = load_claims(paper)
    rows = claims[(claims["table"] == table) & (claims["method"] == method) & (claims["metric"] == metric)]
    if rows.empty:
        raise KeyError(f"no {paper} claim of {method}/{metric} in {table}")
    out = rows[["table", "method", "variant", "metric"]].assign(claimed=rows["value"], measured=measured)
    return out.assign(delta=out["measured"] - out["claimed"]).reset_index(drop=True)
