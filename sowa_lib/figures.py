"""Figures of the study (seaborn/matplotlib), saved as PNG and PDF under ``figures/<profile>/``.

Every figure function takes data (samples, predictions, the results frame) and returns a
matplotlib Figure; :func:`save` writes it. Demo figures carry the profile in their title.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "ipympl")) else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from sowa_lib.data.sample import Sample  # noqa: E402
from sowa_lib.profiles import PROFILES, profile_note  # noqa: E402
from sowa_lib.tables import category_means  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd
    import torch

PROFILE_NOTE = {name: profile_note(name) for name in PROFILES}


def save(fig: plt.Figure, name: str, out_dir: Path) -> list[Path]:
    """Write ``name``.png and ``name``.pdf into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=120, metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    return paths


def overlay_mask(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """``image`` with the boundary of ``mask`` drawn in ``color`` (both at the image's size)."""
    out = image.copy()
    out[find_boundaries(mask, mode="inner")] = color
    return out


def sample_grid(samples_by_category: dict[str, Sequence[Sample]], per_category: int = 4, title: str = "") -> plt.Figure:
    """One row per category: its first normal test image, then anomalous ones with mask outlines."""
    rows = len(samples_by_category)
    fig, axes = plt.subplots(rows, per_category, figsize=(1.8 * per_category, 1.8 * rows), squeeze=False)
    for ax_row, (category, samples) in zip(axes, samples_by_category.items()):
        normal = [s for s in samples if s.label == 0][:1]
        anomalous = [s for s in samples if s.label == 1][: per_category - len(normal)]
        for ax, sample in zip(ax_row, normal + anomalous):
            ax.imshow(overlay_mask(sample.read_image(), sample.read_mask()))
            ax.set_title(sample.defect, fontsize=7)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(category, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


CURVE_METRICS = {"image_auroc": "AC AUROC", "image_ap": "AC AP", "pixel_auroc": "AS AUROC", "aupro": "AS PRO"}


def fewshot_curves(results: "pd.DataFrame", methods: Sequence[str], datasets: Sequence[str], profile: str) -> plt.Figure:
    """SOWA's fig5 layout: rows AC AUROC, AC AP, AS AUROC, AS PRO; one column per dataset;
    x = K (0 = zero-shot, categorical), mean ± std over seeds of the category means (sowa spec §4.3)."""
    import seaborn as sns

    frame = category_means(results[results["variant"] == "default"])
    frame = frame[frame["method"].isin(methods) & frame["dataset"].isin(datasets) & frame["metric"].isin(CURVE_METRICS)]
    frame = frame.assign(K=frame["shots"].astype(str))
    order = [str(k) for k in sorted(frame["shots"].unique())]
    fig, axes = plt.subplots(len(CURVE_METRICS), len(datasets), figsize=(3 * len(datasets), 2.4 * len(CURVE_METRICS)), squeeze=False, sharex=True)
    for row, (metric, label) in enumerate(CURVE_METRICS.items()):
        for col, dataset in enumerate(datasets):
            ax = axes[row, col]
            part = frame[(frame["metric"] == metric) & (frame["dataset"] == dataset)]
            if len(part):
                sns.pointplot(part, x="K", y="value", hue="method", hue_order=list(methods), order=order, errorbar="sd",
                              ax=ax, dodge=0.2, markersize=4, linewidth=1.2, legend=(row == 0 and col == len(datasets) - 1))
            ax.set_title(dataset if row == 0 else "", fontsize=9)
            ax.set_ylabel(label if col == 0 else "")
            ax.set_xlabel("K" if row == len(CURVE_METRICS) - 1 else "")
    fig.suptitle(f"Few-shot curves — {PROFILE_NOTE.get(profile, profile)}", fontsize=9)
    fig.tight_layout()
    return fig


SIZE_BINS = ((0.0, 0.005, "<0.5%"), (0.005, 0.01, "<1%"), (0.01, 0.10, "≤10%"), (0.10, 1.0, ">10%"))


def size_bin_metrics(pred_maps: "torch.Tensor", masks: "torch.Tensor", bins: Sequence[tuple[float, float, str]] = SIZE_BINS) -> "pd.DataFrame":
    """Pixel AUROC and AUPRO per anomaly-size bin (sowa spec §4.6).

    Our reading of the unstated protocol: an anomalous image belongs to the bin of its total defect
    area as a fraction of the image; each bin is scored on its anomalous images together with all
    normal test images of the category. Bins without images are left out.
    """
    import pandas as pd
    from sowa_lib.metrics import pixel_metrics

    area = masks.float().mean(dim=(1, 2))
    normal = area == 0
    rows = []
    for low, high, label in bins:
        member = (area > low) & (area <= high)
        if member.any():
            keep = normal | member
            values = pixel_metrics(pred_maps[keep], masks[keep])
            rows.append({"bin": label, "images": int(member.sum()), "pixel_auroc": 100 * values["auroc"], "aupro": 100 * values["aupro"]})
    return pd.DataFrame(rows)


def size_bins_plot(table: "pd.DataFrame", profile: str) -> plt.Figure:
    """Bars of pixel AUROC and AUPRO per size bin, one hue per method/K (``table`` has a ``series`` column)."""
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, metric, label in zip(axes, ("pixel_auroc", "aupro"), ("AS AUROC", "AS PRO")):
        sns.barplot(table, x="bin", y=metric, hue="series", ax=ax, legend=ax is axes[-1])
        ax.set_ylabel(label)
        ax.set_xlabel("defect area (fraction of the image)")
    fig.suptitle(f"Anomaly-size analysis — {PROFILE_NOTE.get(profile, profile)}", fontsize=9)
    fig.tight_layout()
    return fig


def _heat(image: np.ndarray, score_map: np.ndarray) -> np.ndarray:
    """The map min-max normalised per image, JET colours blended 0.5/0.5 with the image (SOWA's visualiser)."""
    from skimage.transform import resize

    span = score_map.max() - score_map.min()
    norm = (score_map - score_map.min()) / span if span > 0 else np.zeros_like(score_map)
    heat = plt.get_cmap("jet")(norm)[..., :3]
    base = resize(image, score_map.shape, anti_aliasing=True)
    return 0.5 * base + 0.5 * heat


def map_panels(samples: Sequence[Sample], columns: dict[str, np.ndarray], masks: np.ndarray, title: str) -> plt.Figure:
    """Rows of [image | GT | one heat map per column]; ``columns[name]`` is ``[N, H, W]`` over ``samples``.

    Used for the qualitative comparison (sowa fig6: WinCLIP | April-GAN | SOWA) and the hierarchical
    H1–H4 + fusion panels (sowa fig7).
    """
    names = list(columns)
    fig, axes = plt.subplots(len(samples), 2 + len(names), figsize=(1.6 * (2 + len(names)), 1.6 * len(samples)), squeeze=False)
    for row, sample in enumerate(samples):
        image = sample.read_image()
        panels = [image, masks[row]] + [_heat(image, columns[name][row]) for name in names]
        for col, (ax, panel) in enumerate(zip(axes[row], panels)):
            ax.imshow(panel, cmap="gray" if col == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title((["image", "GT"] + names)[col], fontsize=8)
        axes[row, 0].set_ylabel(f"{sample.category}\n{sample.defect}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def variant_bars(results: "pd.DataFrame", method: str, metrics: Sequence[str], profile: str) -> plt.Figure:
    """One bar per variant of ``method`` (category means, mean over seeds), one panel per metric."""
    import seaborn as sns

    frame = category_means(results[results["method"] == method])
    frame = frame[frame["metric"].isin(metrics)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 0.35 * frame["variant"].nunique() + 1.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sns.barplot(frame[frame["metric"] == metric], y="variant", x="value", hue="setting", ax=ax, errorbar="sd", legend=ax is axes[0, -1])
        ax.set_xlabel(metric)
        ax.set_ylabel("")
    fig.suptitle(f"{method} ablations — {PROFILE_NOTE.get(profile, profile)}", fontsize=9)
    fig.tight_layout()
    return fig
