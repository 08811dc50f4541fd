"""Image-, pixel- and region-level anomaly detection metrics.

Implements ``specs/datasets_metrics_agpnet.md`` §3 (section numbers below refer to it):

* AUROC, AP and F1-max on image scores and on the pooled pixels of a category (§3.6, §3.7);
* AUPRO in three variants (``AUPRO_VARIANTS``): ``"mvtec"``, the official MVTec AD definition
  (§3.1, the default and the reference); ``"cflow_loop"``, the 200-threshold skimage loop of
  April-GAN / AnomalyCLIP (§3.3); ``"sowa"``, the same loop with SOWA's per-image-mean FPR (§3.3).

All pixel ranking metrics and the ``"mvtec"`` AUPRO come from one sort of the pooled scores (plus
a sort of the anomalous pixels' scores), with equal scores forming one tie group, so ties are
handled exactly: every distinct score is a threshold, as in scikit-learn and the official MVTec
script.

Undefined metrics (a category without anomalous or normal images or pixels, or a loop-AUPRO
without two usable thresholds) are NaN, never 0 and never an exception: the returned
:class:`MetricValues` is a plain ``dict[str, float]`` whose ``reasons`` attribute maps each NaN
metric to why it is NaN. ``SOWA`` itself raises where no threshold has FPR < limit; here that is a
NaN with a reason too, so one bad category does not abort a whole run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from sowa_lib.vocabulary import QUALITY_METRICS
AUPRO_VARIANTS: tuple[str, ...] = ("mvtec", "cflow_loop", "sowa")
LOOP_STEPS = 200  # §3.3: max_step of April-GAN, AnomalyCLIP and SOWA

# 8-connectivity inside each map, no connection between maps of a stack (§3.1 step 1).
_STACK_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STACK_STRUCTURE[1] = True

Reason = str | None


class MetricValues(dict[str, float]):
    """Metric name -> value; ``reasons`` maps the name of each NaN value to why it is undefined.

    It is a ``dict`` in every other respect (``dict(values)`` keeps the values, drops ``reasons``).
    """

    def __init__(self, values: dict[str, float], reasons: dict[str, str]) -> None:
        super().__init__(values)
        self.reasons = dict(reasons)


@dataclass(frozen=True)
class _RankedCurve:
    """The scores ranked in descending order, summarised at the tie groups that hold a positive.

    Every distinct score is a threshold. Between two such groups the ROC, PR and PRO curves only
    move along the false-positive axis, so these groups and the totals determine all the metrics.
    For the g-th such group, highest score first: ``tp[g]`` positives and ``fp[g]`` negatives score
    >= its score, ``tp_before[g]`` and ``fp_before[g]`` score > it. ``positives_desc``: flat
    indices of the positive elements, highest score first.
    """

    tp: np.ndarray
    fp: np.ndarray
    tp_before: np.ndarray
    fp_before: np.ndarray
    n_pos: int
    n_neg: int
    positives_desc: np.ndarray


# ----------------------------------------------------------------------------- inputs


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()  # exact, so ties are kept; numpy has no bfloat16
        return x.numpy()
    return np.asarray(x)


def _scores(x: np.ndarray | torch.Tensor, ndim: int, what: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.ndim != ndim or a.size == 0:
        raise ValueError(f"{what} must be a non-empty {ndim}-d array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{what} must be real numbers, got dtype {a.dtype}")
    finite = np.isfinite(a)
    if not finite.all():  # NaN has no rank; ±inf breaks the loop AUPRO's min-max threshold grid (§3.3)
        n_nan = int(np.isnan(a).sum())
        raise ValueError(f"{what} contain non-finite values ({n_nan} NaN, {a.size - int(finite.sum()) - n_nan} ±inf); "
                         "fix the scorer or replace them (e.g. np.nan_to_num) before computing metrics")
    return a


def _binary(x: np.ndarray | torch.Tensor, shape: tuple[int, ...], what: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {a.shape}")
    if a.dtype != bool:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{what} must be boolean or 0/1 (threshold soft masks first)")
        a = a.astype(bool)
    return a


def _check_aupro_args(variant: str, limit: float) -> None:
    if variant not in AUPRO_VARIANTS:
        raise ValueError(f"unknown AUPRO variant {variant!r}; choose one of {AUPRO_VARIANTS}")
    if not 0 < limit <= 1:
        raise ValueError(f"AUPRO integration limit must be in (0, 1], got {limit}")


# ----------------------------------------------------------------------------- shared sort


def _ranked_curve(scores: np.ndarray, positive: np.ndarray) -> _RankedCurve:
    """One ascending value sort of all scores, shared by every metric of a category, plus a sort of
    the positives' scores. Equal scores form one tie group (every distinct score is a threshold
    with its tie group's last point kept: §3.1 step 5, scikit-learn's ``_binary_clf_curve``);
    -0.0 and +0.0 tie. The counts at a positive score v: elements >= v and > v by binary search
    in the sorted scores, positives >= v by position among the sorted positives.
    """
    flat, is_positive = scores.ravel(), positive.ravel()
    ranked = np.sort(flat)
    positive_index = np.flatnonzero(is_positive)
    positives_desc = positive_index[np.argsort(flat[positive_index])[::-1]]
    positive_scores = flat[positives_desc]
    group_last = np.ones(positive_scores.size, dtype=bool)
    group_last[:-1] = positive_scores[1:] != positive_scores[:-1]
    ascending = positive_scores[group_last][::-1]  # distinct positive scores, sorted for the search
    n_at_least = flat.size - np.searchsorted(ranked, ascending, side="left")[::-1]
    n_above = flat.size - np.searchsorted(ranked, ascending, side="right")[::-1]
    tp = np.flatnonzero(group_last) + 1
    tp_before = np.concatenate(([0], tp[:-1]))
    return _RankedCurve(
        tp=tp,
        fp=n_at_least - tp,
        tp_before=tp_before,
        fp_before=n_above - tp_before,
        n_pos=positive_index.size,
        n_neg=flat.size - positive_index.size,
        positives_desc=positives_desc,
    )


# ----------------------------------------------------------------------------- ranking metrics


def _auroc(c: _RankedCurve) -> float:
    """Mann-Whitney form of the trapezoid area under the exact ROC: each positive counts the
    negatives scoring below it, plus half of those tied with it."""
    twice_count = int(np.sum((c.tp - c.tp_before) * (2 * c.n_neg - c.fp - c.fp_before)))
    return twice_count / (2 * c.n_pos * c.n_neg)


def _average_precision(c: _RankedCurve) -> float:
    """Step-wise AP = sum_n (R_n - R_{n-1}) P_n, as ``sklearn.metrics.average_precision_score``."""
    return float(np.sum((c.tp - c.tp_before) * (c.tp / (c.tp + c.fp)))) / c.n_pos


def _f1max(c: _RankedCurve) -> float:
    """§3.6: max of 2PR/(P+R) over the precision-recall curve; 2PR/(P+R) = 2TP/(TP+FP+#pos).

    It peaks where TP rises (FP only grows in between); points with TP = 0 give 0 here and NaN
    in the sklearn formula, which drops them: same max.
    """
    return float(np.max(2 * c.tp / (c.tp + c.fp + c.n_pos)))


def _ranking_metrics(c: _RankedCurve, unit: str) -> MetricValues:
    """AUROC, AP and F1-max of one curve; NaN with a reason where a class is missing."""
    reasons: dict[str, str] = {}
    if c.n_pos == 0:
        reasons = {name: f"no anomalous {unit}" for name in ("auroc", "ap", "f1max")}
    elif c.n_neg == 0:
        reasons["auroc"] = f"no normal {unit}"
    compute = {"auroc": _auroc, "ap": _average_precision, "f1max": _f1max}
    values = {name: np.nan if name in reasons else f(c) for name, f in compute.items()}
    return MetricValues(values, reasons)


def image_metrics(
    scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> MetricValues:
    """Image-level ``auroc``, ``ap`` and ``f1max`` (§3.6) of scores [N] and 0/1 labels [N]."""
    s = _scores(scores, 1, "image scores")
    return _ranking_metrics(_ranked_curve(s, _binary(labels, s.shape, "image labels")), "image")


# ----------------------------------------------------------------------------- AUPRO


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth regions: 8-connected components of each mask (§3.1 step 1; equal to
    skimage's default ``measure.label`` used by the loop variants, §3.3), labelled 1..R over the
    whole stack, and their sizes indexed by label (index 0 = background)."""
    labels, _ = ndimage.label(masks, structure=_STACK_STRUCTURE)
    return labels, np.bincount(labels.ravel())


def _area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """§3.1 ``generic_util.trapezoid``: trapezoid area of y(x) on [0, limit], x non-decreasing,
    closed by a segment to the value linearly interpolated at ``limit`` when it is not a sample."""
    n = int(np.searchsorted(x, limit, side="right"))
    area = float(np.trapezoid(y[:n], x[:n]))
    if x[n - 1] < limit:
        y_limit = y[n - 1] + (y[n] - y[n - 1]) * (limit - x[n - 1]) / (x[n] - x[n - 1])
        area += 0.5 * (y[n - 1] + y_limit) * (limit - x[n - 1])
    return area


def _aupro_mvtec(c: _RankedCurve, labels: np.ndarray, sizes: np.ndarray, limit: float) -> float:
    """§3.1: exact PRO curve at every distinct score, FPR pooled over all normal pixels, PRO the
    mean over all regions of the category; area up to ``limit`` divided by ``limit``.

    The curve is drawn through the points just above and at each tie group holding region pixels,
    from (0, 0) to (1, 1): the points dropped in between lie on its horizontal stretches.
    """
    region_desc = labels.ravel()[c.positives_desc]
    pro_at = np.concatenate(([0.0], np.cumsum(1.0 / sizes[region_desc]))) / (sizes.size - 1)
    fpr = np.column_stack((c.fp_before, c.fp)).ravel() / c.n_neg
    pro = np.minimum(pro_at[np.column_stack((c.tp_before, c.tp)).ravel()], 1.0)
    x, y = np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0]))
    return _area_to_limit(x, y, limit) / limit


def _loop_thresholds(scores: np.ndarray) -> np.ndarray:
    """§3.3 step 1: ``np.arange(min, max, (max - min) / 200)``, min, max and step in the maps'
    dtype as the reference codes compute them."""
    lo, hi = scores.min(), scores.max()
    return np.arange(lo, hi, (hi - lo) / LOOP_STEPS)


def _region_counts_above(
    maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """[R, T]: pixels of each ground-truth region scoring ``> thresholds[t]`` (ascending), and
    the region sizes [R]."""
    labels, sizes = _label_regions(masks)
    region_pixels = labels > 0
    n_below = np.searchsorted(thresholds, maps[region_pixels], side="left")  # thresholds < score
    width = thresholds.size + 1
    flat_bins = (labels[region_pixels] - 1) * width + n_below
    hist = np.bincount(flat_bins, minlength=(sizes.size - 1) * width).reshape(-1, width)
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:], sizes[1:]


def _normal_counts_above(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[N, T]: normal pixels of each map scoring ``> thresholds[t]``, from one sort of each map
    with its anomalous pixels set to +inf."""
    rows = np.sort(np.where(masks, np.inf, maps).reshape(len(maps), -1), axis=1)
    above = np.stack([row.size - np.searchsorted(row, thresholds, side="right") for row in rows])
    return above - masks.reshape(len(maps), -1).sum(axis=1)[:, None]


def _loop_curve(
    maps: np.ndarray, masks: np.ndarray, per_image_fpr: bool
) -> tuple[np.ndarray, np.ndarray]:
    """§3.3 step 2 at every threshold of the grid, without the loop: FPR (pooled, or the mean of
    per-image FPRs for SOWA) and PRO (mean over regions of the fraction of the region above)."""
    thresholds = _loop_thresholds(maps)
    region_hits, sizes = _region_counts_above(maps, masks, thresholds)
    pro = np.mean(region_hits / sizes[:, None], axis=0)
    false_pos = _normal_counts_above(maps, masks, thresholds)
    normal = (~masks).sum(axis=(1, 2))
    if per_image_fpr:
        return np.mean(false_pos / normal[:, None], axis=0), pro
    return false_pos.sum(axis=0) / normal.sum(), pro


def _loop_area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> tuple[float, Reason]:
    """§3.3 step 3: keep FPR < limit, min-max rescale the kept FPRs, ``sklearn.metrics.auc``."""
    keep = fpr < limit
    if keep.sum() < 2:
        return np.nan, f"fewer than two loop thresholds have FPR < {limit}"
    f = fpr[keep]
    if f.max() == f.min():
        return np.nan, f"all loop thresholds with FPR < {limit} have the same FPR"
    f = (f - f.min()) / (f.max() - f.min())
    return float(-np.trapezoid(pro[keep], f)), None  # FPR falls as the threshold rises: auc flips


def _aupro_reason(maps: np.ndarray, masks: np.ndarray, variant: str) -> Reason:
    """Why AUPRO is undefined for this category before any curve is drawn, or None."""
    if not masks.any():
        return "no anomalous pixel (no ground-truth region)"
    if masks.all():
        return "no normal pixel (FPR undefined)"
    if variant != "mvtec" and maps.min() == maps.max():
        return "constant anomaly maps (empty threshold grid)"
    if variant == "sowa" and masks.all(axis=(1, 2)).any():
        return "an image has no normal pixel (SOWA's per-image FPR undefined)"
    return None


def _aupro(
    maps: np.ndarray, masks: np.ndarray, curve: _RankedCurve, limit: float, variant: str
) -> tuple[float, Reason]:
    """AUPRO of one category and why it is NaN, if it is; ``curve`` is used by ``"mvtec"``."""
    reason = _aupro_reason(maps, masks, variant)
    if reason is not None:
        return np.nan, reason
    if variant == "mvtec":
        labels, sizes = _label_regions(masks)
        return _aupro_mvtec(curve, labels, sizes, limit), None
    return _loop_area(*_loop_curve(maps, masks, per_image_fpr=variant == "sowa"), limit)


def aupro(
    maps: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    limit: float = 0.3,
    variant: str = "mvtec",
) -> float:
    """AUPRO (normalised to [0, 1]) of maps [N,H,W] against boolean masks [N,H,W].

    ``variant``: ``"mvtec"`` (§3.1), ``"cflow_loop"`` or ``"sowa"`` (§3.3). NaN where undefined;
    :func:`pixel_metrics` returns the same value with the reason.
    """
    return pixel_metrics(maps, masks, variant, limit)["aupro"]


def pixel_metrics(
    maps: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    aupro_variant: str = "mvtec",
    limit: float = 0.3,
) -> MetricValues:
    """Pixel-level ``auroc``, ``ap``, ``f1max`` over all pixels of all maps pooled (§3.6, §3.7)
    and ``aupro`` (§3.1/§3.3), sharing one sort of the pooled scores."""
    _check_aupro_args(aupro_variant, limit)
    m = _scores(maps, 3, "anomaly maps")
    k = _binary(masks, m.shape, "masks")
    curve = _ranked_curve(m, k)
    values = _ranking_metrics(curve, "pixel")
    values["aupro"], reason = _aupro(m, k, curve, limit, aupro_variant)
    if reason is not None:
        values.reasons["aupro"] = reason
    return values


def category_metrics(
    scores: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    maps: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    aupro_variant: str = "mvtec",
    limit: float = 0.3,
) -> MetricValues:
    """The seven metrics of one category, keyed by :data:`~sowa_lib.vocabulary.QUALITY_METRICS` (reasons keyed likewise)."""
    image = image_metrics(scores, labels)
    pixel = pixel_metrics(maps, masks, aupro_variant, limit)
    values = {f"image_{k}": v for k, v in image.items()}
    values |= {k if k == "aupro" else f"pixel_{k}": v for k, v in pixel.items()}
    reasons = {f"image_{k}": r for k, r in image.reasons.items()}
    reasons |= {k if k == "aupro" else f"pixel_{k}": r for k, r in pixel.reasons.items()}
    return MetricValues({name: values[name] for name in QUALITY_METRICS}, reasons)
