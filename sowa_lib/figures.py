"""Figures of the study (seaborn/matplotlib), saved as PNG and PDF under ``figures/<profile>/``.

Every figure function takes data (samples, predictions, the results frame) and returns a
matplotlib Figure drawn with constrained layout, legends outside the data, the papers' metric names
in words with their unit (:mod:`sowa_lib.vocabulary`) and one colour per method in every figure
(:data:`METHOD_COLORS`). :func:`save` writes it (PNG at a screen resolution, PDF as vector) and
closes it; :func:`show` displays a saved PNG at display size in a notebook. Demo figures carry the
profile in their title.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "ipympl")) else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from IPython.display import Image  # noqa: E402
from matplotlib.colors import Normalize, to_rgb  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402
from skimage.transform import resize  # noqa: E402

from sowa_lib.data.sample import Sample  # noqa: E402
from sowa_lib.metrics import pixel_metrics  # noqa: E402
from sowa_lib.profiles import PROFILES, profile_note  # noqa: E402
from sowa_lib.tables import category_means  # noqa: E402
from sowa_lib.vocabulary import QUALITY_METRICS, method_label, metric_label, setting_label  # noqa: E402

PROFILE_NOTE = {name: profile_note(name) for name in PROFILES}
#: One colour per method in every figure (seaborn's colour-blind palette; SOWA in vermillion).
METHOD_COLORS = {
    "sowa": "#d55e00", "april_gan": "#0173b2", "winclip": "#029e73", "agpnet": "#cc78bc",
    "spade": "#ca9161", "padim": "#949494", "patchcore": "#de8f05", "floor": "#56b4e9",
}
#: PNG resolution: figures are sized in inches for the page, so 100 dpi shows them at display size.
PNG_DPI = 100
#: A saved PNG larger than this is shown re-encoded as JPEG (photographs: the sample grids, maps).
SHOW_MAX_PNG_BYTES = 40_000
HEAT_LABEL = "anomaly score, min–max normalised per image"


def method_color(method: str, lighten: float = 0.0) -> tuple[float, float, float]:
    """``method``'s colour (grey when it has none), mixed with white by ``lighten`` ∈ [0, 1]."""
    rgb = np.array(to_rgb(METHOD_COLORS.get(method, "#333333")))
    return tuple(rgb + (1.0 - rgb) * lighten)


def title(text: str, profile: str) -> str:
    """A figure title with the profile note (:data:`PROFILE_NOTE`) on its second line."""
    return f"{text}\n{PROFILE_NOTE.get(profile, profile)}"


def alt_text(fig: plt.Figure) -> str:
    """A figure's description for readers who cannot see it: its title on one line."""
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    return " — ".join(suptitle.split("\n")) or " / ".join(ax.get_title() for ax in fig.axes if ax.get_title())


def save(fig: plt.Figure, name: str, out_dir: Path, alt: str | None = None) -> list[Path]:
    """Write ``name``.png (:data:`PNG_DPI`) and ``name``.pdf (vector) into ``out_dir``, with ``alt``
    (default :func:`alt_text`) as their description metadata, then close ``fig`` (a notebook shows the
    PNG with :func:`show`, the report reads the description as the image's alt text)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    alt = alt or alt_text(fig)
    fig.savefig(paths[0], dpi=PNG_DPI, metadata={"Title": name, "Description": alt})
    fig.savefig(paths[1], metadata={"Title": name, "Subject": alt, "CreationDate": None})
    plt.close(fig)
    return paths


def saved_alt_text(path: Path) -> str:
    """The description :func:`save` wrote into the PNG at ``path`` (its file name when there is none)."""
    with PILImage.open(path) as image:
        return image.info.get("Description") or Path(path).stem.replace("_", " ")


def show(path: Path | Sequence[Path], width: int | None = None, alt: str = "") -> Any:
    """An ``IPython.display.Image`` of the PNG at ``path`` (or the first ``.png`` of :func:`save`'s
    paths), ``width`` pixels wide (default: its own), with ``alt`` text (default: the description
    :func:`save` stored). A PNG over :data:`SHOW_MAX_PNG_BYTES` is embedded at ``width`` as the smaller
    of a 64-colour PNG (charts) and a JPEG (photographs, heat maps), so that notebooks stay small;
    the file on disk keeps its full resolution."""
    if not isinstance(path, (str, Path)):
        path = next(p for p in path if Path(p).suffix == ".png")
    path = Path(path)
    alt = alt or saved_alt_text(path)
    if path.stat().st_size <= SHOW_MAX_PNG_BYTES:
        return Image(filename=str(path), width=width, alt=alt)
    image = PILImage.open(path).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), PILImage.Resampling.LANCZOS)
    encoded = {}
    for kind, picture, options in (("png", image.quantize(64), {"optimize": True}), ("jpeg", image, {"quality": 70, "optimize": True})):
        buffer = io.BytesIO()
        picture.save(buffer, format=kind.upper(), **options)
        encoded[kind] = buffer.getvalue()
    kind = min(encoded, key=lambda k: len(encoded[k]))
    return Image(data=encoded[kind], format=kind, width=width, alt=alt)


def overlay_mask(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """``image`` with the boundary of ``mask`` drawn in ``color`` (both at the image's size)."""
    out = image.copy()
    out[find_boundaries(mask, mode="inner")] = color
    return out


def _blank(ax: plt.Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def sample_grid(samples_by_category: dict[str, Sequence[Sample]], per_category: int = 4, title: str = "") -> plt.Figure:
    """One row per category: its first normal test image, then anomalous ones with mask outlines."""
    rows = len(samples_by_category)
    fig, axes = plt.subplots(rows, per_category, figsize=(1.4 * per_category, 1.4 * rows + 0.4), squeeze=False,
                             layout="constrained")
    for ax_row, (category, samples) in zip(axes, samples_by_category.items()):
        normal = [s for s in samples if s.label == 0][:1]
        anomalous = [s for s in samples if s.label == 1][: per_category - len(normal)]
        for ax, sample in zip(ax_row, normal + anomalous):
            ax.imshow(overlay_mask(sample.read_image(), sample.read_mask()))
            ax.set_title(sample.defect, fontsize=7)
        for ax in ax_row:
            _blank(ax)
        ax_row[0].set_ylabel(category, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


CURVE_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "aupro")
SHOTS_LABEL = "K normal reference images (0 = zero-shot)"


def fewshot_curves(results: pd.DataFrame, methods: Sequence[str], datasets: Sequence[str], profile: str) -> plt.Figure:
    """SOWA's fig5 layout: rows image AUROC, image AP, pixel AUROC, pixel AUPRO; one column per
    dataset; x = K (0 = zero-shot), mean ± std over seeds of the category means (sowa spec §4.3)."""
    frame = category_means(results[results["variant"] == "default"])
    frame = frame[frame["method"].isin(methods) & frame["dataset"].isin(datasets) & frame["metric"].isin(CURVE_METRICS)]
    per_k = frame.groupby(["metric", "dataset", "method", "shots"])["value"].agg(["mean", "std"]).reset_index()
    shots = sorted(frame["shots"].dropna().astype(int).unique())
    fig, axes = plt.subplots(len(CURVE_METRICS), len(datasets), figsize=(2.6 * len(datasets) + 1.6, 1.9 * len(CURVE_METRICS)),
                             squeeze=False, sharex=True, layout="constrained")
    offsets = np.linspace(-0.12, 0.12, max(len(methods), 1))
    for row, metric in enumerate(CURVE_METRICS):
        for col, dataset in enumerate(datasets):
            ax = axes[row, col]
            for offset, method in zip(offsets, methods):
                part = per_k[(per_k["metric"] == metric) & (per_k["dataset"] == dataset) & (per_k["method"] == method)]
                x = [shots.index(int(k)) + offset for k in part["shots"]]
                ax.errorbar(x, part["mean"], yerr=part["std"].fillna(0), color=method_color(method), marker="o",
                            markersize=3.5, linewidth=1.2, capsize=2, label=method_label(method))
            ax.set_xticks(range(len(shots)), [str(k) for k in shots])
            ax.grid(axis="y", linewidth=0.4, alpha=0.5)
            ax.set_title(dataset if row == 0 else "", fontsize=9)
            ax.set_ylabel(metric_label(metric) if col == 0 else "", fontsize=8)
    fig.supxlabel(SHOTS_LABEL, fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="method (mean ± std over seeds)", fontsize=8, title_fontsize=8)
    fig.suptitle(title("Few-shot curves", profile), fontsize=9)
    return fig


SIZE_BINS = ((0.0, 0.005, "<0.5%"), (0.005, 0.01, "<1%"), (0.01, 0.10, "≤10%"), (0.10, 1.0, ">10%"))
SIZE_METRICS = ("pixel_auroc", "aupro")


def size_bin_metrics(pred_maps: torch.Tensor, masks: torch.Tensor, bins: Sequence[tuple[float, float, str]] = SIZE_BINS) -> pd.DataFrame:
    """Pixel AUROC and AUPRO per anomaly-size bin (sowa spec §4.6).

    Our reading of the unstated protocol: an anomalous image belongs to the bin of its total defect
    area as a fraction of the image; each bin is scored on its anomalous images together with all
    normal test images of the category. Bins without images are left out.
    """
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


def size_bins_plot(table: pd.DataFrame, profile: str) -> plt.Figure:
    """Bars of pixel AUROC and AUPRO per size bin (SOWA fig8): ``table`` has the columns of
    :func:`size_bin_metrics` plus ``method`` and ``shots``; zero-shot bars are the lighter shade of
    the method's colour. Each bin's tick says how many anomalous images it holds."""
    series = table[["method", "shots"]].drop_duplicates().itertuples(index=False, name=None)
    series = list(series)
    bins = [label for _, _, label in SIZE_BINS if label in set(table["bin"])]
    counts = table.groupby("bin")["images"].max()
    width = 0.8 / max(len(series), 1)
    fig, axes = plt.subplots(1, len(SIZE_METRICS), figsize=(4.2 * len(SIZE_METRICS) + 1.8, 3.2), layout="constrained")
    for ax, metric in zip(np.atleast_1d(axes), SIZE_METRICS):
        for i, (method, shots) in enumerate(series):
            part = table[(table["method"] == method) & (table["shots"] == shots)].set_index("bin").reindex(bins)
            ax.bar(np.arange(len(bins)) + (i - (len(series) - 1) / 2) * width, part[metric], width=width,
                   color=method_color(method, lighten=0.55 if shots == 0 else 0.0), edgecolor="white", linewidth=0.4,
                   label=f"{method_label(method)}, K = {shots}")
        ax.set_xticks(range(len(bins)), [f"{b}\n({counts[b]} images)" for b in bins], fontsize=8)
        ax.set_ylabel(metric_label(metric), fontsize=8)
        ax.set_xlabel("defect area, fraction of the image", fontsize=8)
        ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title="method, K", title_fontsize=8)
    fig.suptitle(title("Anomaly-size analysis (each bin with all normal images)", profile), fontsize=9)
    return fig


def _heat(image: np.ndarray, score_map: np.ndarray) -> np.ndarray:
    """The map min-max normalised per image, JET colours blended 0.5/0.5 with the image (SOWA's visualiser)."""
    span = score_map.max() - score_map.min()
    norm = (score_map - score_map.min()) / span if span > 0 else np.zeros_like(score_map)
    heat = plt.get_cmap("jet")(norm)[..., :3]
    base = resize(image, score_map.shape, anti_aliasing=True)
    return 0.5 * base + 0.5 * heat


def map_panels(samples: Sequence[Sample], columns: dict[str, np.ndarray], masks: np.ndarray, title: str) -> plt.Figure:
    """Rows of [image | ground truth | one heat map per column]; ``columns[name]`` is ``[N, H, W]``
    over ``samples``, with a colour bar for the heat maps (each min–max normalised per image).

    Used for the qualitative comparison (sowa fig6: WinCLIP | April-GAN | SOWA) and the hierarchical
    H1–H4 + fusion panels (sowa fig7).
    """
    names = list(columns)
    fig, axes = plt.subplots(len(samples), 2 + len(names), figsize=(1.35 * (2 + len(names)) + 0.9, 1.35 * len(samples) + 0.5),
                             squeeze=False, layout="constrained")
    for row, sample in enumerate(samples):
        image = sample.read_image()
        panels = [image, masks[row]] + [_heat(image, columns[name][row]) for name in names]
        for col, (ax, panel) in enumerate(zip(axes[row], panels)):
            ax.imshow(panel, cmap="gray" if col == 1 else None)
            _blank(ax)
            if row == 0:
                ax.set_title((["image", "ground truth"] + [method_label(n) for n in names])[col], fontsize=8)
        axes[row, 0].set_ylabel(f"{sample.category}\n{sample.defect}", fontsize=7)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=Normalize(0, 1), cmap="jet"), ax=axes[:, 2:], shrink=0.8, aspect=30)
    bar.set_label(HEAT_LABEL, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def variant_bars(results: pd.DataFrame, method: str, metrics: Sequence[str], profile: str) -> plt.Figure:
    """One bar per variant of ``method`` (category means, mean ± std over seeds), one panel per
    metric, one shade per setting; the default configuration's value as a dashed line."""
    frame = category_means(results[results["method"] == method])
    frame = frame[frame["metric"].isin(metrics)]
    stats = frame.groupby(["metric", "setting", "variant"])["value"].agg(["mean", "std"]).reset_index()
    variants = sorted(stats["variant"].unique(), key=lambda v: (v != "default", v))
    settings = list(dict.fromkeys(stats["setting"]))
    height = 0.8 / max(len(settings), 1)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics) + 3.2, 0.3 * len(variants) * len(settings) + 1.6),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        for i, setting in enumerate(settings):
            part = stats[(stats["metric"] == metric) & (stats["setting"] == setting)].set_index("variant").reindex(variants)
            ax.barh(np.arange(len(variants)) + (i - (len(settings) - 1) / 2) * height, part["mean"], height=height,
                    xerr=part["std"].fillna(0), color=method_color(method, lighten=0.5 * i / max(len(settings) - 1, 1)),
                    error_kw={"linewidth": 0.6}, label=setting_label(setting))
            if "default" in part.index and np.isfinite(part.loc["default", "mean"]):
                ax.axvline(part.loc["default", "mean"], color="black", linestyle="--", linewidth=0.6)
        ax.set_yticks(range(len(variants)), variants, fontsize=7)
        ax.set_xlabel(metric_label(metric), fontsize=8)
        ax.grid(axis="x", linewidth=0.4, alpha=0.5)
    axes[0, 0].invert_yaxis()  # the default on top (the y axis is shared)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title="setting (dashed: default)", title_fontsize=8)
    fig.suptitle(title(f"{method_label(method)} ablations", profile), fontsize=9)
    return fig


#: Claim judgements in the scatter: colours and markers apart from the method palette.
STATUS_STYLE = {"within": ("#222222", "o"), "outside": ("#a50026", "x")}


def claims_scatter(compared: pd.DataFrame, paper: str, profile: str, band: float) -> plt.Figure:
    """Claimed (x) against reproduced (y) for every claim of ``paper`` with a reproduced value, in
    percent (``compared`` from :func:`sowa_lib.tables.compare`): the diagonal, the ± ``band`` points
    tolerance band around it, and each claim coloured by its own judgement (within / outside its
    tolerance, which can be wider than the band where the paper prints a std)."""
    part = compared[(compared["paper"] == paper) & compared["reproduced"].notna() & compared["metric"].isin(QUALITY_METRICS)
                    & (compared["setting"] != "leaderboard")]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    low = float(np.nanmin([part["value"].min(), part["reproduced"].min(), 0.0])) if len(part) else 0.0
    line = np.array([low, 100.0])
    ax.fill_between(line, line - band, line + band, color="#bbbbbb", alpha=0.5, linewidth=0, label=f"± {band:g} point")
    ax.plot(line, line, color="black", linewidth=0.6, label="reproduced = claimed")
    for status, (color, marker) in STATUS_STYLE.items():
        points = part[part["status"] == status]
        ax.scatter(points["value"], points["reproduced"], s=14, color=color, marker=marker, alpha=0.8, linewidths=0.8,
                   label=f"{status} tolerance ({len(points)} claims)")
    ax.set_xlim(low, 100)
    ax.set_ylim(low, 100)
    ax.set_xlabel("claimed by the paper (%)", fontsize=8)
    ax.set_ylabel("reproduced here (%)", fontsize=8)
    fig.legend(loc="outside right center", fontsize=7)
    fig.suptitle(title(f"{paper}: claimed vs reproduced, one point per claim", profile), fontsize=8)
    return fig
