"""Markdown paragraphs that say what a table or figure shows, computed from its data (issue 16, "A
narrative per result"). Notebooks display them with ``IPython.display.Markdown``; the report
(:mod:`sowa_lib.report`) collects them. Nothing here is hard-coded about the results: every method,
metric and number named comes from the frame passed in. In the demo profile each paragraph ends by
saying that the numbers show the machinery only.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from sowa_lib.vocabulary import method_label, metric_name, setting_label

DEMO_NOTE = ("*Demo profile: generated images and tiny randomly initialised models — these numbers show that the "
             "machinery runs end to end, not how the methods compare in the papers' setting.*")
HEADLINE_METRICS = ("image_auroc", "pixel_auroc", "aupro")


def banner(profile: str) -> str:
    """The profile's banner for the top of a notebook or report."""
    if profile == "demo":
        return ("> **Demo profile.** Numbers come from the embedded demo benchmark and tiny, randomly initialised models "
                "of the real architectures. They show that the pipeline runs end to end and reproduces itself; they are "
                "**not** comparable with the papers' numbers. Run `make reproduce-all PROFILE=paper DATA_ROOT=...` for the "
                "real study.")
    return f"> **{profile.capitalize()} profile.** Official datasets and pretrained weights; see the provenance of every run."


def _with_note(text: str, profile: str) -> str:
    return f"{text}\n\n{DEMO_NOTE}" if profile == "demo" else text


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def leaders(means: pd.DataFrame, profile: str, metrics: Sequence[str] = HEADLINE_METRICS) -> str:
    """Which method leads each metric in each (dataset, setting, K) of ``means``
    (:func:`sowa_lib.tables.category_means`: category means per seed, in percent), averaged over seeds."""
    frame = means[means["metric"].isin(metrics) & (means["variant"] == "default")]
    if frame.empty:
        return _with_note("No completed runs to compare yet.", profile)
    stats = frame.groupby(["dataset", "setting", "shots", "metric", "method"], dropna=False)["value"].mean().reset_index()
    lines = []
    for (dataset, setting, shots), part in stats.groupby(["dataset", "setting", "shots"], dropna=False, sort=True):
        if part["method"].nunique() < 2:
            continue
        said = []
        for metric in metrics:
            values = part[part["metric"] == metric].dropna(subset=["value"]).sort_values("value", ascending=False)
            if len(values) >= 2:
                top, second = values.iloc[0], values.iloc[1]
                said.append(f"{method_label(top['method'])} leads {metric_name(metric)} ({top['value']:.1f} %, "
                            f"{top['value'] - second['value']:.1f} points above {method_label(second['method'])})")
        where = f"{dataset}, {setting_label(setting)}" + (f", K = {int(shots)}" if pd.notna(shots) and setting == "few_shot" else "")
        if said:
            lines.append(f"- **{where}**: " + "; ".join(said) + ".")
    text = "Category means, averaged over seeds:\n\n" + "\n".join(lines) if lines else "Only one method per setting so far."
    return _with_note(text, profile)


def single_method(means: pd.DataFrame, profile: str, metrics: Sequence[str] = HEADLINE_METRICS) -> str:
    """For a table of one method in several settings (AGPNet multi- vs one-class): which setting is
    higher on each metric, per dataset, and by how much."""
    frame = means[means["metric"].isin(metrics) & (means["variant"] == "default")]
    stats = frame.groupby(["dataset", "metric", "setting"])["value"].mean().reset_index()
    lines = []
    for (dataset, metric), part in stats.groupby(["dataset", "metric"]):
        part = part.dropna(subset=["value"]).sort_values("value", ascending=False)
        if len(part) >= 2:
            lines.append(f"{dataset}, {metric_name(metric)}: {setting_label(part.iloc[0]['setting'])} "
                         f"{part.iloc[0]['value']:.1f} % vs {setting_label(part.iloc[1]['setting'])} {part.iloc[1]['value']:.1f} %")
    return _with_note(("- " + "\n- ".join(lines)) if lines else "Only one setting run so far.", profile)


def floor(floor_scores: pd.DataFrame, profile: str, metrics: Sequence[str] = HEADLINE_METRICS) -> str:
    """What the trivial floor scorer reaches per dataset (:func:`sowa_lib.study.floor_scores`)."""
    means = floor_scores.groupby("dataset")[[m for m in metrics if m in floor_scores]].mean() * 100
    lines = [f"- **{d}**: " + ", ".join(f"{metric_name(m)} {v:.1f} %" for m, v in row.items()) for d, row in means.iterrows()]
    return _with_note("The floor every method should beat (category means):\n\n" + "\n".join(lines), profile)


def reference_sharing(draws: pd.DataFrame) -> str:
    """How many (dataset, category, K, seed) draws there are and which methods used the common draw
    every time (:func:`sowa_lib.study.reference_draws`)."""
    if draws.empty:
        return "No few-shot runs in the store yet."
    keys = ["dataset", "category", "shots", "seed"]
    own = draws[~draws["shared"]].groupby("method").size()
    always = sorted(set(draws["method"]) - set(own.index))
    text = (f"{draws.groupby(keys).ngroups} draws of reference images. On the common draw every time: "
            f"{_join([method_label(m) for m in always]) or 'none'}.")
    if len(own):
        text += " Own draw: " + _join([f"{method_label(m)} in {n} of {int((draws['method'] == m).sum())} runs" for m, n in own.items()]) + "."
    return text


def variant_effects(effects: pd.DataFrame, profile: str, threshold: float = 1.0) -> str:
    """Which variant moved each metric most (:func:`sowa_lib.tables.variant_effects`, Δ in points),
    and how many moved no metric by more than ``threshold`` points."""
    if effects.empty:
        return _with_note("No variant beside its default yet.", profile)
    lines = []
    for metric in effects.columns:
        column = effects[metric].dropna()
        if len(column) and column.abs().max() < 0.05:
            lines.append(f"- {metric_name(metric)}: unchanged by every variant.")
        elif len(column):
            key = column.abs().idxmax()
            lines.append(f"- {metric_name(metric)}: `{key[1]}` ({method_label(key[0])}, {setting_label(key[2])}) "
                         f"moved it most, {column[key]:+.1f} points.")
    still = int((effects.abs().max(axis=1) <= threshold).sum())
    text = (f"{len(effects)} variants measured beside their defaults. Largest effect per metric:\n\n" + "\n".join(lines)
            + f"\n\n{still} of {len(effects)} variants moved no metric by more than {threshold:g} point.")
    return _with_note(text, profile)


def claims(compared: pd.DataFrame, profile: str) -> str:
    """Per paper: claims within / outside tolerance, the median |Δ| and the farthest claim
    (``compared`` from :func:`sowa_lib.tables.compare`)."""
    lines = []
    for paper, part in compared.groupby("paper", sort=False):
        judged = part[part["status"].isin(["within", "outside"])]
        counts = part["status"].value_counts()
        if judged.empty:
            lines.append(f"- **{paper}**: none of {len(part)} claims reproduced yet "
                         f"({counts.get('not_run', 0)} not run, {counts.get('no_producer', 0)} with no producer).")
            continue
        far = judged.loc[judged["delta"].abs().idxmax()]
        where = ", ".join(str(far[f]) for f in ("table", "dataset", "category", "method") if pd.notna(far[f]) and str(far[f]))
        lines.append(f"- **{paper}**: {counts.get('within', 0)} of {len(judged)} reproduced claims within tolerance; "
                     f"median |Δ| {judged['delta'].abs().median():.1f}; farthest: {metric_name(far['metric'])} of {where} "
                     f"({far['value']:.1f} claimed, {far['reproduced']:.1f} reproduced). "
                     f"{counts.get('not_run', 0)} not run, {counts.get('no_producer', 0)} with no producer.")
    return _with_note("\n".join(lines), profile)


def speed(speeds: pd.DataFrame, ratios: pd.DataFrame, profile: str) -> str:
    """Fastest and slowest method, each method's cost over its plain backbone forward, and the
    measured SOWA ratios beside the claimed ones (:func:`sowa_lib.study.speed_table`, ``speed_ratios``)."""
    ordered = speeds.sort_values("fps", ascending=False)
    fast, slow = ordered.index[0], ordered.index[-1]
    measured = ratios.loc["measured here"]
    claimed = ratios.drop(index="measured here")
    lines = [f"{method_label(fast)} is the fastest ({ordered.loc[fast, 'fps']:.1f} images/s), "
             f"{method_label(slow)} the slowest ({ordered.loc[slow, 'fps']:.1f} images/s). "
             f"Cost over one plain backbone forward (CPU time): from {speeds['cpu_ratio'].min():.1f}× "
             f"({method_label(speeds['cpu_ratio'].idxmin())}) to {speeds['cpu_ratio'].max():.1f}× "
             f"({method_label(speeds['cpu_ratio'].idxmax())})."]
    for column in ratios.columns:
        lines.append(f"{column}: measured {measured[column]:.2f}, claimed {claimed[column].min():.2f}–{claimed[column].max():.2f} "
                     "over the paper's datasets.")
    return _with_note(" ".join(lines), profile)


def fewshot_trend(means: pd.DataFrame, methods: Sequence[str], profile: str, metrics: Sequence[str] = HEADLINE_METRICS) -> str:
    """For the few-shot curves: per method, the change from its lowest to its highest K of each
    metric, averaged over datasets and seeds."""
    frame = means[means["method"].isin(methods) & means["metric"].isin(metrics) & (means["variant"] == "default")]
    stats = frame.groupby(["method", "metric", "shots"])["value"].mean().reset_index()
    lines = []
    for method in methods:
        said = []
        for metric in metrics:
            part = stats[(stats["method"] == method) & (stats["metric"] == metric)].dropna().sort_values("shots")
            if len(part) >= 2:
                said.append(f"{metric_name(metric)} {part['value'].iloc[-1] - part['value'].iloc[0]:+.1f} points")
        if said:
            shots = stats[stats["method"] == method]["shots"]
            lines.append(f"- {method_label(method)} from K = {int(shots.min())} to K = {int(shots.max())}: " + ", ".join(said) + ".")
    return _with_note("\n".join(lines) or "No few-shot runs yet.", profile)


def size_bins(table: pd.DataFrame, profile: str, metrics: Sequence[str] = ("pixel_auroc", "aupro")) -> str:
    """Per defect-size bin (:func:`sowa_lib.study.size_bin_table`): the leading (method, K) on each
    metric and the bin's image count."""
    lines = []
    for bin_label, part in table.groupby("bin", sort=False):
        said = []
        for metric in metrics:
            best = part.loc[part[metric].idxmax()] if part[metric].notna().any() else None
            if best is not None:
                said.append(f"{method_label(best['method'])} at K = {int(best['shots'])} leads {metric_name(metric)} ({best[metric]:.1f} %)")
        lines.append(f"- **{bin_label}** ({int(part['images'].max())} anomalous images): " + "; ".join(said) + ".")
    few = table.groupby("bin")["images"].max()
    caveat = (f" Bins with fewer than 5 anomalous images ({_join(list(few[few < 5].index))}) say little." if (few < 5).any() else "")
    return _with_note("\n".join(lines) + caveat, profile)

