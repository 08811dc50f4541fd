"""Figures of the study (seaborn/matplotlib), saved as PNG and PDF under ``figures/<profile>/``.

Every figure function takes data (samples, predictions, the results frame) and returns a
matplotlib Figure; :func:`save` writes it. Demo figures carry the profile in their title.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "ipympl")) else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from sowa_lib.data.sample import Sample  # noqa: E402

PROFILE_NOTE = {"demo": "demo profile: generated benchmark, tiny random models — not paper numbers", "paper": "paper profile"}


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
