"""``sowa_lib.report`` on a fixture store: one self-contained HTML page holding every paper table,
a claims scatter per paper, every figure with alt text, the notebooks' narrative and provenance.
(The headless-browser check, ``tools/check_report.py``, needs Chromium and is not part of the suite.)"""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pytest
from PIL import Image

from sowa_lib import figures, report, runs, tables
from sowa_lib.claims import load_claims
from sowa_lib.profiles import get_profile


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, Path]:
    """A demo study whose store holds April-GAN zero-shot runs on demo_a (the role of MVTec-AD) at each
    Table 5 claim + 0.5 points, one figure, and one executed notebook with generated Markdown."""
    root = tmp_path_factory.mktemp("study")
    study = get_profile("demo", data_root=root / "data", results_dir=root / "results")
    claims = load_claims("april_gan")
    per_cat = claims[(claims["table"] == "Table 5") & (claims["category"] != "mean")]
    for category, part in per_cat.groupby("category"):
        spec = runs.RunSpec("demo", "demo_a", category, "april_gan", "zero_shot", 0, 0)
        runs.write_run(study.run_dir, spec, {r.metric: (r.value + 0.5) / 100 for r in part.itertuples()},
                       provenance=runs.provenance(weights="ViT-L-14-336:openai"))
    fig, ax = plt.subplots(layout="constrained")
    ax.plot([0, 1], [0, 1])
    fig.suptitle("a line\nfixture")
    figures.save(fig, "line", study.figures_dir)
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 01 · Zero-shot\n\nPurpose paragraph."),
        nbformat.v4.new_code_cell("display(Markdown(text))", outputs=[nbformat.v4.new_output(
            "display_data", data={"text/markdown": "- **demo_a**: April-GAN leads pixel AUROC", "text/plain": "<Markdown>"})]),
    ])
    books = root / "notebooks"
    books.mkdir()
    nbformat.write(notebook, books / "01_zero_shot.ipynb")
    out = report.build(study, sorted(books.glob("*.ipynb")))
    return out.read_text(encoding="utf-8"), out


def test_report_holds_every_paper_table_and_the_summary(built) -> None:
    page, out = built
    assert out.name == "report.html" and out.parent.name == "demo"
    for table_id in tables.TABLE_IDS:
        assert f'id="{table_id}"' in page
    assert page.count("<table") >= len(tables.TABLE_IDS) + 2  # + summary and provenance
    assert "claimed | reproduced | Δ" in page or "| Δ" in page


def test_every_image_is_embedded_decodes_and_has_alt_text(built) -> None:
    page, _ = built
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)">', page)
    assert len(images) == page.count("<img") >= 2  # claims scatters (April-GAN's and any paper citing it) and the figure
    for data, alt in images:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 100
        assert alt.strip()
    alts = [alt for _, alt in images]
    assert any(alt.startswith("april_gan: scatter of claimed against reproduced values") and "within tolerance" in alt for alt in alts)
    assert "a line — fixture" in alts  # the title's two lines


def test_report_opens_offline(built) -> None:
    page, _ = built
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_narrative_and_provenance_are_in_the_report(built) -> None:
    page, _ = built
    assert "Purpose paragraph." in page and "April-GAN leads pixel AUROC" in page
    assert "ViT-L-14-336:openai" in page  # weights id of the runs
    assert "within tolerance" in page  # the generated claims paragraph
    assert "Demo profile" in page


def test_provenance_groups_runs_by_configuration() -> None:
    import pandas as pd

    results = pd.DataFrame({"method": ["a", "a", "a", "b"], "variant": "default", "setting": "few_shot",
                            "dataset": "d", "category": ["c1", "c1", "c2", "c1"], "shots": 1, "seed": [0, 0, 1, 0],
                            "metric": ["m1", "m2", "m1", "m1"], "commit": ["abc", "abc", "def", "abc"],
                            "weights": "w", "created": ["t1", "t1", "t2", "t3"]})
    table = report.provenance(results).set_index("method")
    assert table.loc["a", "runs"] == 2 and table.loc["a", "seeds"] == "0, 1" and table.loc["a", "commit"] == "abc, def"
    assert table.loc["b", "runs"] == 1 and table.loc["a", "created"] == "t1 … t2"
