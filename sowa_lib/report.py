"""One HTML report per profile (``make report`` → ``results/<profile>/report.html``; issue 16, "One
report").

It holds, in one self-contained file that opens offline (inline CSS, images embedded as base64, no
script, nothing fetched): the executed notebooks' narrative (their markdown and the paragraphs
:mod:`sowa_lib.narrative` generated), every paper table as ``claimed | reproduced | Δ``
(:func:`sowa_lib.tables.build_table`), a claimed-vs-reproduced scatter per paper with the tolerance
band (:func:`sowa_lib.figures.claims_scatter`), every figure under ``figures/<profile>/`` with its
alt text, and the provenance of every run behind the numbers (profile, commit, package versions,
weights, seeds). ``tools/check_report.py`` loads it in a headless browser.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
from pathlib import Path
from typing import Iterable, Sequence

import mistune
import pandas as pd

from sowa_lib import figures, narrative, runs, tables
from sowa_lib.claims import load_claims
from sowa_lib.profiles import REPO_ROOT, Profile, get_profile
from sowa_lib.vocabulary import QUALITY_METRICS

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; } nav li { margin: 0.15em 0; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.8em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.45em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } .wide { overflow-x: auto; }
blockquote { border-left: 4px solid #d55e00; margin: 1em 0; padding: 0.2em 1em; background: #fff6ef; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .caption { font-size: 0.85em; color: #555; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _markdown(text: str) -> str:
    """Markdown (with pipe tables) as HTML; raw HTML in the source is escaped."""
    return mistune.create_markdown(escape=True, plugins=["table"])(text)


def _table_html(frame: pd.DataFrame) -> str:
    return '<div class="wide">' + frame.to_html(index=False, escape=True, na_rep=tables.MISSING, border=0) + "</div>"


def _image_html(path: Path, alt: str, caption: str | None = None) -> str:
    """``<figure>`` with the PNG at ``path`` embedded as base64."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    caption = html.escape(caption if caption is not None else alt)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt, quote=True)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def notebook_narrative(notebook: Path) -> str:
    """The notebook's markdown cells and the Markdown its cells displayed (generated narrative), as
    HTML, in order. Code, streams and images are left out (the figures have their own section)."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells", [])
    parts = []
    for cell in cells:
        if cell["cell_type"] == "markdown":
            parts.append("".join(cell["source"]))
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/markdown")
            if text:
                parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(_markdown(p) for p in parts)


def notebooks_for(study: Profile) -> list[Path]:
    """The executed notebooks of ``study``: ``results/<profile>/notebooks`` (``make reproduce-all``),
    else, for the demo profile, the committed ones in ``notebooks/`` (``make notebooks-refresh``)."""
    executed = sorted((study.run_dir / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if executed or study.name != "demo":
        return executed
    return sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def paper_tables(results: pd.DataFrame, profile: str) -> str:
    """Every paper table (:data:`sowa_lib.tables.TABLE_IDS`) with its caption, as HTML sections."""
    claims = load_claims()
    parts = []
    for table_id in tables.TABLE_IDS:
        table = tables.build_table(table_id, results, profile, claims)
        parts.append(f'<h3 id="{table_id}">{html.escape(table_id)}</h3><p class="caption">{html.escape(table.attrs["caption"])}</p>'
                     + _table_html(table))
    return "\n".join(parts)


def claims_scatters(compared: pd.DataFrame, profile: str, out_dir: Path) -> str:
    """Per paper, :func:`sowa_lib.figures.claims_scatter` saved under ``out_dir`` and embedded, with
    an alt text that says what it shows in numbers."""
    parts = []
    for paper in dict.fromkeys(compared["paper"]):
        part = compared[compared["paper"] == paper]
        shown = part[part["reproduced"].notna() & part["metric"].isin(QUALITY_METRICS) & (part["setting"] != "leaderboard")]
        if shown.empty:
            parts.append(f"<p>{html.escape(paper)}: no claim reproduced yet.</p>")
            continue
        within = int((shown["status"] == "within").sum())
        alt = (f"{paper}: scatter of claimed against reproduced values in percent, {len(shown)} claims, {within} within "
               f"tolerance and {len(shown) - within} outside; diagonal with a ±{tables.MIN_TOLERANCE:g} point band")
        fig = figures.claims_scatter(compared, paper, profile, band=tables.MIN_TOLERANCE)
        png = figures.save(fig, f"claims_{paper}", out_dir, alt=alt)[0]
        parts.append(_image_html(png, alt))
    return "\n".join(parts)


def figures_section(figures_dir: Path, skip: Iterable[str] = ()) -> str:
    """Every PNG under ``figures_dir`` (but ``skip``), embedded, with the description :func:`figures.save`
    stored as alt text and caption."""
    pngs = [p for p in sorted(Path(figures_dir).glob("*.png")) if p.stem not in set(skip)]
    if not pngs:
        return "<p>No figures yet: run <code>07_figures</code>.</p>"
    return "\n".join(f"<h3>{html.escape(p.stem)}</h3>" + _image_html(p, figures.saved_alt_text(p)) for p in pngs)


PROVENANCE_KEYS = ["method", "variant", "setting"]


def provenance(results: pd.DataFrame) -> pd.DataFrame:
    """Who computed what: per (method, variant, setting), the datasets, the runs, the seeds, and
    every distinct commit, package version and weights id recorded with those runs, and when."""
    def distinct(values: pd.Series) -> str:
        return ", ".join(sorted({str(v) for v in values.dropna()})) or tables.MISSING

    run_keys = ["dataset", "category", "shots", "seed"]
    grouped = results.groupby(PROVENANCE_KEYS, dropna=False)
    out = grouped.agg(
        datasets=("dataset", distinct),
        seeds=("seed", lambda s: ", ".join(str(v) for v in sorted(s.dropna().unique()))),
        commit=("commit", lambda s: distinct(s.astype(str).str[:12])),
        **{c: (c, distinct) for c in ("sowa_lib", "torch", "open_clip", "weights") if c in results},
        created=("created", lambda s: f"{s.min()} … {s.max()}" if s.notna().any() else tables.MISSING),
    ).reset_index()
    out.insert(len(PROVENANCE_KEYS) + 1, "runs", grouped.apply(lambda g: len(g[run_keys].drop_duplicates()), include_groups=False).to_numpy())
    return out


def build(study: Profile, notebooks: Sequence[Path] | None = None, out: Path | None = None) -> Path:
    """Write the report of ``study`` to ``out`` (default ``results/<profile>/report.html``) and
    return its path. Tables are also written as files (:func:`sowa_lib.tables.build_all`)."""
    out = Path(out or study.run_dir / "report.html")
    results = runs.load_results(study.run_dir)
    if results.empty:
        raise SystemExit(f"report: no runs under {study.run_dir / 'runs'}; run `make reproduce-all PROFILE={study.name}` first")
    tables.build_all(results, study.name, study.run_dir / "tables")
    compared = tables.compare(results, study.name)
    notebooks = notebooks_for(study) if notebooks is None else list(notebooks)
    scatter_dir = study.figures_dir / "report"
    sections = [
        ("summary", "How much of each paper is reproduced",
         _markdown(narrative.claims(compared, study.name)) + _table_html(tables.summary_table(results, study.name))),
        ("scatter", "Claimed vs reproduced, per paper", claims_scatters(compared, study.name, scatter_dir)),
        ("narrative", "The study, notebook by notebook",
         "\n".join(f'<section><h3>{html.escape(nb.stem)}</h3>{notebook_narrative(nb)}</section>' for nb in notebooks)
         or "<p>No executed notebooks found.</p>"),
        ("tables", "Every paper table: claimed | reproduced | Δ", paper_tables(results, study.name)),
        ("figures", "Figures", figures_section(study.figures_dir)),
        ("provenance", "Provenance of every number",
         f"<p>Profile <code>{html.escape(study.name)}</code>; report built at commit <code>{html.escape(runs.provenance()['commit'][:12])}</code> "
         f"from {results[['dataset', 'category', 'method', 'variant', 'setting', 'shots', 'seed']].drop_duplicates().shape[0]} "
         "runs. Each row: the runs behind one method configuration and what they were computed with.</p>"
         + _table_html(provenance(results))),
    ]
    nav = "".join(f'<li><a href="#{key}">{html.escape(title)}</a></li>' for key, title, _ in sections)
    body = "\n".join(f'<h2 id="{key}">{html.escape(title)}</h2>\n{content}' for key, title, content in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>sowa-repro report — {html.escape(study.name)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head><body>'
            f"<h1>sowa-repro — {html.escape(study.name)} profile</h1>{_markdown(narrative.banner(study.name))}"
            f"<nav><ul>{nav}</ul></nav>{body}</body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m sowa_lib.report --profile demo``: build the report and print its path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--notebooks", default=None, help="folder of executed notebooks (default: see notebooks_for)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    study = get_profile(args.profile, args.data_root, args.results_dir)
    notebooks = sorted(Path(args.notebooks).glob("[0-9][0-9]_*.ipynb")) if args.notebooks else None
    print(f"report: {build(study, notebooks, Path(args.out) if args.out else None)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
