"""Every figure function renders a small fixture with no warning (constrained layout that fits,
no overlapping labels) and saves PNG + PDF; :func:`figures.show` keeps embedded images small."""
from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgb

from sowa_lib.data.fabricate import mvtec_tree
from sowa_lib import data, figures
from sowa_lib.claims import load_claims
from sowa_lib.tables import compare

METHODS = ["winclip", "april_gan", "sowa"]


def _results() -> pd.DataFrame:
    """A long results frame: 3 methods × K ∈ {0, 1, 4} × 2 seeds × 2 categories on demo_a and demo_b,
    plus AGPNet's default and one ablation variant in two settings; values fixed by a seeded RNG."""
    rng = np.random.default_rng(0)
    rows = []
    runs = [(m, "default", "zero_shot" if k == 0 else "few_shot", k) for m in METHODS for k in (0, 1, 4)]
    runs += [("agpnet", v, s, None) for v in ("default", "noise=gaussian") for s in ("multi_class", "one_class")]
    for (method, variant, setting, shots), dataset, category, seed, metric in itertools.product(
            runs, ("demo_a", "demo_b"), ("c1", "c2"), (0, 1), ("image_auroc", "image_ap", "pixel_auroc", "aupro")):
        rows.append({"profile": "demo", "dataset": dataset, "category": category, "method": method, "variant": variant,
                     "setting": setting, "shots": shots, "seed": seed, "metric": metric, "value": rng.uniform(0.5, 1.0)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list:
    root = mvtec_tree(tmp_path_factory.mktemp("mvtec"))
    return data.load("mvtec", root, "bottle", "test")


def _figures(samples: list) -> dict:
    """Each figure function called on its fixture (a closure, so that the test wraps the drawing)."""
    results = _results()
    size_table = pd.concat([figures.size_bin_metrics(torch.rand(6, 8, 8), torch.tensor(mask)).assign(method=m, shots=k)
                            for m in METHODS for k in (0, 4)
                            for mask in [np.stack([np.zeros((8, 8))] * 3 + [np.pad(np.ones((s, s)), (0, 8 - s)) for s in (1, 2, 6)])]])
    maps = np.random.default_rng(1).random((len(samples), 8, 8))
    masks = np.stack([s.read_mask() for s in samples])
    claims = load_claims("april_gan")
    mine = claims[claims["table"] == "Table 5"]
    fake = mine[mine["category"] != "mean"].assign(profile="paper", seed=0, variant="default", value=mine["value"] / 100 + 0.01)
    compared = compare(fake.drop(columns=["paper", "table"]), "paper", claims)
    assert compared["reproduced"].notna().sum() > 50  # the scatter has points to draw
    return {
        "sample_grid": lambda: figures.sample_grid({"bottle": samples, "bottle again": samples}, title="fixture"),
        "fewshot_curves": lambda: figures.fewshot_curves(results, METHODS, ["demo_a", "demo_b"], "demo"),
        "size_bins_plot": lambda: figures.size_bins_plot(size_table, "demo"),
        "map_panels": lambda: figures.map_panels(samples, {"winclip": maps, "sowa": maps}, masks, "fixture"),
        "variant_bars": lambda: figures.variant_bars(results, "agpnet", ["image_auroc", "pixel_auroc"], "demo"),
        "claims_scatter": lambda: figures.claims_scatter(compared, "april_gan", "demo", band=1.0),
    }


FIGURE_FUNCTIONS = ["sample_grid", "fewshot_curves", "size_bins_plot", "map_panels", "variant_bars", "claims_scatter"]


@pytest.mark.parametrize("name", FIGURE_FUNCTIONS)
def test_figure_renders_without_layout_warning(name: str, samples: list, tmp_path: Path) -> None:
    draw = _figures(samples)[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = draw()
        fig.canvas.draw()  # constrained layout runs here and warns when the labels do not fit
        paths = figures.save(fig, name, tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    assert paths[1].read_bytes().startswith(b"%PDF")


def test_every_public_figure_function_is_covered() -> None:
    returns_figure = {n for n, f in vars(figures).items() if callable(f) and getattr(f, "__module__", "") == figures.__name__
                      and (getattr(f, "__annotations__", {}).get("return") in ("plt.Figure", "Figure"))}
    assert returns_figure == set(FIGURE_FUNCTIONS)


def test_axes_use_metric_names_in_words(samples: list) -> None:
    fig = _figures(samples)["fewshot_curves"]()
    labels = {ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()}
    assert labels == {"image AUROC (%)", "image AP (%)", "pixel AUROC (%)", "pixel AUPRO (%)"}
    assert not any("AC" in label.split() or "AS" in label.split() for label in labels)


def test_one_colour_per_method_across_figures(samples: list) -> None:
    drawn = _figures(samples)
    curves, bars = drawn["fewshot_curves"](), drawn["size_bins_plot"]()
    handles, labels = curves.axes[0].get_legend_handles_labels()
    curve_colours = {label: handle.lines[0].get_color() for handle, label in zip(handles, labels)}
    for method, label in (("sowa", "SOWA"), ("winclip", "WinCLIP")):
        assert np.allclose(figures.method_color(method), to_rgb(curve_colours[label]))
        bar = next(c for c in bars.axes[0].containers if c.get_label() == f"{label}, K = 4")
        assert np.allclose(bar.patches[0].get_facecolor()[:3], figures.method_color(method))


def test_show_embeds_a_small_image_with_alt_text(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 8), layout="constrained")
    ax.imshow(np.random.default_rng(0).random((400, 400, 3)))  # a photograph-like PNG, too big to embed as is
    png, _ = figures.save(fig, "noise", tmp_path)
    assert png.stat().st_size > figures.SHOW_MAX_PNG_BYTES
    shown = figures.show(png, width=400, alt="random noise")
    assert shown.format == "jpeg" and len(shown.data) < png.stat().st_size / 4 and shown.alt == "random noise"
    fig, ax = plt.subplots(figsize=(12, 9), layout="constrained")
    for i in range(40):
        ax.plot(np.random.default_rng(i).random(200), linewidth=0.5)  # a busy chart: a palette PNG beats a JPEG
    chart, _ = figures.save(fig, "chart", tmp_path)
    if chart.stat().st_size > figures.SHOW_MAX_PNG_BYTES:
        shown = figures.show(chart, width=500)
        assert shown.format in ("png", "jpeg") and len(shown.data) < chart.stat().st_size / 2
