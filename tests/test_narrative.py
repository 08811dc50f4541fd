"""Generated paragraphs name what the data say (hand-made frames with a known answer), and say in
the demo profile that the numbers show the machinery only."""
from __future__ import annotations

import pandas as pd

from sowa_lib import narrative


def _means(rows: list[tuple[str, str, float]], setting: str = "zero_shot", shots: int = 0) -> pd.DataFrame:
    """Category means (percent) of (method, metric, value) on demo_a, seeds 0 and 1 at value ± 1."""
    return pd.DataFrame([{"dataset": "demo_a", "setting": setting, "shots": shots, "variant": "default", "method": m,
                          "metric": metric, "seed": seed, "value": v + (1 if seed else -1)}
                         for m, metric, v in rows for seed in (0, 1)])


def test_leaders_names_the_leading_method_its_value_and_margin() -> None:
    means = _means([("sowa", "image_auroc", 80.0), ("winclip", "image_auroc", 75.5), ("april_gan", "image_auroc", 70.0),
                    ("sowa", "aupro", 40.0), ("april_gan", "aupro", 52.0)])
    text = narrative.leaders(means, "paper")
    assert "SOWA leads image AUROC (80.0 %, 4.5 points above WinCLIP)" in text
    assert "April-GAN leads pixel AUPRO (52.0 %, 12.0 points above SOWA)" in text
    assert "demo_a, zero-shot" in text and narrative.DEMO_NOTE not in text
    assert narrative.leaders(means, "demo").endswith(narrative.DEMO_NOTE)


def test_variant_effects_picks_the_largest_change_per_metric() -> None:
    index = pd.MultiIndex.from_tuples([("sowa", "window=2", "few_shot", "demo_a", 4), ("agpnet", "noise=gaussian", "multi_class", "demo_a", 0),
                                       ("winclip", "exact_gelu", "zero_shot", "demo_a", 0)],
                                      names=["method", "variant", "setting", "dataset", "shots"])
    effects = pd.DataFrame({"image_auroc": [2.0, -7.5, 0.3], "aupro": [3.1, 0.4, -0.2]}, index=index)
    text = narrative.variant_effects(effects, "paper")
    assert "image AUROC: `noise=gaussian` (AGPNet, multi-class (one model for all categories)) moved it most, -7.5 points." in text
    assert "pixel AUPRO: `window=2` (SOWA, few-shot) moved it most, +3.1 points." in text
    assert "1 of 3 variants moved no metric by more than 1 point." in text
    assert "pixel AUPRO: unchanged by every variant." in narrative.variant_effects(effects.assign(aupro=0.0), "paper")


def test_claims_counts_within_and_names_the_farthest_claim() -> None:
    compared = pd.DataFrame({
        "paper": ["april_gan"] * 4, "table": ["Table 3"] * 4, "dataset": ["mvtec"] * 4, "category": ["mean"] * 4,
        "method": ["april_gan"] * 4, "metric": ["image_auroc", "pixel_auroc", "aupro", "image_ap"],
        "value": [86.1, 87.6, 44.0, 93.5], "reproduced": [86.5, 80.0, 44.2, None],
        "delta": [0.4, -7.6, 0.2, None], "status": ["within", "outside", "within", "not_run"]})
    text = narrative.claims(compared, "paper")
    assert "2 of 3 reproduced claims within tolerance" in text and "median |Δ| 0.4" in text
    assert "farthest: pixel AUROC of Table 3, mvtec, mean, april_gan (87.6 claimed, 80.0 reproduced)" in text
    assert "1 not run" in text


def test_reference_sharing_lists_methods_with_their_own_draw() -> None:
    draws = pd.DataFrame({"dataset": "d", "category": "c", "shots": [1, 1, 1, 2, 2, 2], "seed": 0,
                          "method": ["sowa", "winclip", "april_gan"] * 2, "shared": [True, True, False, True, True, True]})
    text = narrative.reference_sharing(draws)
    assert text.startswith("2 draws of reference images. On the common draw every time: SOWA and WinCLIP.")
    assert "Own draw: April-GAN in 1 of 2 runs." in text


def test_size_bins_names_the_leader_per_bin_and_warns_about_small_bins() -> None:
    table = pd.DataFrame({"method": ["sowa", "winclip"] * 2, "shots": [4, 0] * 2, "bin": ["<1%", "<1%", ">10%", ">10%"],
                          "images": [12, 12, 2, 2], "pixel_auroc": [90.0, 95.0, 70.0, 60.0], "aupro": [50.0, 40.0, 30.0, 35.0]})
    text = narrative.size_bins(table, "paper")
    assert "**<1%** (12 anomalous images): WinCLIP at K = 0 leads pixel AUROC (95.0 %); SOWA at K = 4 leads pixel AUPRO (50.0 %)." in text
    assert "fewer than 5 anomalous images (>10%)" in text
