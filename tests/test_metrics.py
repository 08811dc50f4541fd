"""Tests of sowa_lib.metrics against slow, obviously-correct references and scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from sowa_lib.metrics import (
    AUPRO_VARIANTS,
    aupro,
    category_metrics,
    image_metrics,
    pixel_metrics,
)
from sowa_lib.vocabulary import QUALITY_METRICS

# ----------------------------------------------------------------------------- slow references


def ref_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of (positive, negative) pairs ordered correctly, ties counting 1/2."""
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def ref_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Sum over the distinct thresholds, descending, of (R_n - R_{n-1}) P_n."""
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        recall = tp / labels.sum()
        total += (recall - prev_recall) * tp / predicted.sum()
        prev_recall = recall
    return total


def ref_f1max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best F1 over every distinct threshold, by brute force."""
    best = 0.0
    for t in set(scores.tolist()):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        best = max(best, 2 * tp / (predicted.sum() + labels.sum()))
    return best


def sk_f1max(scores: np.ndarray, labels: np.ndarray) -> float:
    """§3.6 as April-GAN / SOWA write it."""
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * p * r / (p + r)
    return float(np.max(f1[np.isfinite(f1)]))


def ref_aupro_mvtec(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """§3.1 written literally: one point per distinct score, skimage 8-connected regions."""
    regions = [r.coords for m in masks for r in measure.regionprops(measure.label(m))]
    images = [i for i, m in enumerate(masks) for _ in measure.regionprops(measure.label(m))]
    xs, ys = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        above = maps >= t
        xs.append(np.sum(above & ~masks) / np.sum(~masks))
        ys.append(np.mean([above[i][c[:, 0], c[:, 1]].mean() for i, c in zip(images, regions)]))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 >= limit:
            break
        if x1 > limit:
            y1, x1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0), limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


def ref_aupro_loop(maps: np.ndarray, masks: np.ndarray, per_image_fpr: bool, limit: float = 0.3) -> float:
    """§3.3: the cflow-ad loop of April-GAN (pooled FPR) / SOWA (mean of per-image FPRs)."""
    pros, fprs = [], []
    min_th, max_th = maps.min(), maps.max()
    for th in np.arange(min_th, max_th, (max_th - min_th) / 200):
        binary = maps > th
        pro = []
        for b, m in zip(binary, masks):
            for region in measure.regionprops(measure.label(m)):
                pro.append(b[region.coords[:, 0], region.coords[:, 1]].sum() / region.area)
        inverse = ~masks
        fp = np.logical_and(inverse, binary)
        if per_image_fpr:
            fprs.append(np.mean(fp.sum(axis=(1, 2)) / inverse.sum(axis=(1, 2))))
        else:
            fprs.append(fp.sum() / inverse.sum())
        pros.append(np.mean(pro))
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < limit
    f = fprs[keep]
    return auc((f - f.min()) / (f.max() - f.min()), pros[keep])


# ----------------------------------------------------------------------------- fixtures


def blob_maps(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth float32 maps with 0-2 rectangular defects per image, defects scoring higher."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 5, 2)
            masks[i, y : y + h, x : x + w] = True
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    return maps.astype(np.float32), masks


def random_scores(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.35
    labels[:2] = (True, False)
    if kind == "float":
        scores = rng.normal(size=n) + labels
    elif kind == "int":  # heavy ties
        scores = rng.integers(0, 4, n) + labels * rng.integers(0, 2, n)
    else:  # float32 with ties, negatives and both zeros
        scores = np.round(rng.normal(size=n) + labels, 1).astype(np.float32)
        scores[:4] = (-0.0, 0.0, -0.0, 0.0)
    return scores, labels


# ----------------------------------------------------------------------------- image level

KINDS = ["float", "int", "float32_ties"]


@pytest.mark.parametrize("kind", KINDS)
def test_image_metrics_match_slow_references(kind: str) -> None:
    scores, labels = random_scores(kind, 120, seed=1)
    got = image_metrics(scores, labels)
    assert got["auroc"] == pytest.approx(ref_auroc(scores, labels), abs=1e-12)
    assert got["ap"] == pytest.approx(ref_ap(scores, labels), abs=1e-12)
    assert got["f1max"] == pytest.approx(ref_f1max(scores, labels), abs=1e-12)
    assert got.reasons == {}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_match_sklearn(kind: str, seed: int) -> None:
    scores, labels = random_scores(kind, 50 + 40 * seed, seed)
    got = image_metrics(scores, labels)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["f1max"] == pytest.approx(sk_f1max(scores, labels), abs=1e-12)


def test_tie_handling_on_a_tiny_hand_case() -> None:
    # positives 2, 1; negatives 1, 0: pairs (2>1, 2>0, 1=1 -> 1/2, 1>0) -> 3.5 / 4
    got = image_metrics(np.array([2.0, 1.0, 1.0, 0.0]), np.array([1, 1, 0, 0]))
    assert got["auroc"] == pytest.approx(3.5 / 4)
    # thresholds 2: R=1/2, P=1; 1: R=1, P=2/3 -> AP = 1/2 + 1/2 * 2/3
    assert got["ap"] == pytest.approx(0.5 + 1 / 3)
    # threshold 1 gives TP=2, FP=1 -> F1 = 4/5; threshold 2 gives 2/3
    assert got["f1max"] == pytest.approx(0.8)


# ----------------------------------------------------------------------------- pixel level


@pytest.mark.parametrize("quantise", [None, 1, 0])
def test_pixel_metrics_match_sklearn_on_pooled_pixels(quantise: int | None) -> None:
    maps, masks = blob_maps(6, 24, seed=3)
    if quantise is not None:
        maps = np.round(maps, quantise)
    got = pixel_metrics(maps, masks)
    s, y = maps.ravel(), masks.ravel()
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert got["f1max"] == pytest.approx(sk_f1max(s, y), abs=1e-12)


def test_float32_and_float64_maps_agree() -> None:
    """Same values in float32 and float64 (with -0.0 tying +0.0) give the same metrics."""
    maps, masks = blob_maps(5, 16, seed=4)
    maps = np.round(maps, 1)
    maps[0, 0, :4] = (-0.0, 0.0, -0.0, 0.0)
    a = pixel_metrics(maps.astype(np.float32), masks)
    b = pixel_metrics(maps.astype(np.float64), masks)
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=1e-12)


def test_torch_and_numpy_inputs_give_the_same_values() -> None:
    maps, masks = blob_maps(4, 16, seed=5)
    scores = maps.max(axis=(1, 2))
    labels = masks.any(axis=(1, 2))
    want = category_metrics(scores, labels, maps, masks)
    got = category_metrics(
        torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(maps), torch.from_numpy(masks)
    )
    assert got == want
    for variant in AUPRO_VARIANTS:
        assert aupro(torch.from_numpy(maps), torch.from_numpy(masks), variant=variant) == aupro(
            maps, masks, variant=variant
        )
    for low in (torch.float16, torch.bfloat16):
        rounded = torch.from_numpy(maps).to(low)
        assert pixel_metrics(rounded, masks) == pixel_metrics(rounded.float().numpy(), masks)


# ----------------------------------------------------------------------------- AUPRO, hand cases


def one(*rows: list[float]) -> np.ndarray:
    return np.array([rows], dtype=np.float32)


def test_aupro_one_region_with_interpolation_at_the_limit() -> None:
    masks = one([1, 1, 0], [0, 0, 0]).astype(bool)
    maps = one([0.9, 0.5, 0.8], [0.4, 0.3, 0.2])
    # curve (0,0) (0,.5) (.25,.5) (.25,1) (.5,1) ...: .25*.5 + .05*1 = .175 over .3
    assert aupro(maps, masks) == pytest.approx(0.175 / 0.3)
    # limit on a sample: the vertical jump at .25 adds nothing -> .125 / .25
    assert aupro(maps, masks, limit=0.25) == pytest.approx(0.5)


def test_aupro_ties_are_one_threshold() -> None:
    masks = one([1, 1, 0], [0, 0, 0]).astype(bool)
    maps = one([0.9, 0.5, 0.8], [0.5, 0.3, 0.2])  # region pixel and normal pixel tie at 0.5
    # curve (0,0) (0,.5) (.25,.5) (.5,1): y(.3) = .6 -> .125 + .05 * (.5+.6)/2 = .1525 over .3
    assert aupro(maps, masks) == pytest.approx(0.1525 / 0.3)


def test_aupro_averages_regions_not_pixels() -> None:
    masks = one([1, 0, 1, 1, 1, 0]).astype(bool)  # regions {0} and {2,3,4}
    maps = one([0.6, 0.7, 0.9, 0.8, 0.1, 0.2])
    # PRO: 1/6, 1/3, (fpr .5) 1/3, 5/6, (fpr 1) 5/6, 1 -> area .5/3 + .5*5/6
    assert aupro(maps, masks, limit=1.0) == pytest.approx(7 / 12)
    assert aupro(maps, masks, limit=0.3) == pytest.approx(1 / 3)


def test_aupro_regions_in_several_images_and_a_normal_image() -> None:
    masks = np.array([[[1, 0]], [[1, 1]], [[0, 0]]], dtype=bool)
    maps = np.array([[[0.9, 0.1]], [[0.8, 0.3]], [[0.5, 0.2]]], dtype=np.float32)
    # regions are not connected across images; FPR pools the 3 normal pixels of all images
    # curve (0,.5) (0,.75) (1/3,.75) (1/3,1) (2/3,1) (1,1)
    assert aupro(maps, masks, limit=1.0) == pytest.approx(0.75 / 3 + 2 / 3)
    assert aupro(maps, masks, limit=0.3) == pytest.approx(0.75)


def test_aupro_diagonal_neighbours_form_one_region() -> None:
    masks = one([1, 0, 0], [0, 1, 1]).astype(bool)
    maps = one([0.9, 0.5, 0.4], [0.3, 0.2, 0.1])
    # 8-connected: one region of 3 -> PRO 1/3 over the whole FPR range (4-connected would give 1/2)
    assert aupro(maps, masks, limit=1.0) == pytest.approx(1 / 3)


@pytest.mark.parametrize("decimals", [None, 1])
def test_aupro_mvtec_matches_a_literal_reimplementation(decimals: int | None) -> None:
    maps, masks = blob_maps(4, 12, seed=6)
    if decimals is not None:
        maps = np.round(maps, decimals)
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, limit=limit) == pytest.approx(ref_aupro_mvtec(maps, masks, limit), abs=1e-12)


def loop_case(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name.startswith("blobs"):
        return blob_maps(4, 12, seed=int(name[-1]))
    if name == "normal pixels reach higher":  # the top thresholds step through distinct FPRs
        maps, masks = blob_maps(4, 12, seed=9)
        return np.where(masks, maps, 3 * maps), masks
    if name == "scores on the grid":  # pixels equal to thresholds: `>` binarisation matters
        maps, masks = blob_maps(4, 12, seed=10)
        scaled = (maps - maps.min()) / (maps.max() - maps.min()) * 200  # min 0, max 200
        scaled[..., ::2] = np.round(scaled[..., ::2])  # half the pixels on the grid
        return (scaled / 256).astype(np.float32), masks  # step 200/256/200 = 2**-8, exact
    # one image, 4 region pixels, 10 normal ones: some thresholds have FPR exactly 3/10 = 0.3,
    # and the normal 0.994 lies between the two highest thresholds (0.991 and 0.9955)
    row = [1.0, 0.95, 0.85, 0.75, 0.994, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    return np.array([[row]], np.float32), np.array([[[1] * 4 + [0] * 10]], bool)


@pytest.mark.parametrize("variant", ["cflow_loop", "sowa"])
@pytest.mark.parametrize(
    "case", ["blobs 7", "blobs 8", "normal pixels reach higher", "scores on the grid", "FPR = 0.3"]
)
def test_loop_variants_match_the_literal_loop(variant: str, case: str) -> None:
    maps, masks = loop_case(case)
    want = ref_aupro_loop(maps, masks, per_image_fpr=variant == "sowa")
    assert aupro(maps, masks, variant=variant) == pytest.approx(want, abs=1e-12)
    assert pixel_metrics(maps, masks, aupro_variant=variant)["aupro"] == pytest.approx(want, abs=1e-12)


def test_pooled_and_per_image_fpr_differ_when_images_differ_in_size_of_background() -> None:
    maps, masks = blob_maps(4, 12, seed=9)
    masks[0, :8] = True  # image 0 has few normal pixels: its per-image FPR weighs more
    assert aupro(maps, masks, variant="sowa") != pytest.approx(aupro(maps, masks, variant="cflow_loop"))


# ----------------------------------------------------------------------------- undefined values


def test_image_metrics_without_anomalous_or_normal_images() -> None:
    none = image_metrics(np.array([0.1, 0.2, 0.3]), np.zeros(3, bool))
    assert all(math.isnan(v) for v in none.values())
    assert none.reasons == {k: "no anomalous image" for k in ("auroc", "ap", "f1max")}
    only = image_metrics(np.array([0.1, 0.2, 0.3]), np.ones(3, bool))
    assert math.isnan(only["auroc"]) and only.reasons == {"auroc": "no normal image"}
    assert only["ap"] == average_precision_score(np.ones(3), [0.1, 0.2, 0.3]) == 1.0
    assert only["f1max"] == 1.0


@pytest.mark.parametrize("variant", AUPRO_VARIANTS)
def test_pixel_metrics_without_anomalous_pixels(variant: str) -> None:
    maps, _ = blob_maps(3, 8, seed=10)
    got = pixel_metrics(maps, np.zeros(maps.shape, bool), aupro_variant=variant)
    assert all(math.isnan(v) for v in got.values())
    assert set(got.reasons) == {"auroc", "ap", "f1max", "aupro"}
    assert got.reasons["auroc"] == "no anomalous pixel"


@pytest.mark.parametrize("variant", AUPRO_VARIANTS)
def test_pixel_metrics_without_normal_pixels(variant: str) -> None:
    maps, _ = blob_maps(3, 8, seed=11)
    got = pixel_metrics(maps, np.ones(maps.shape, bool), aupro_variant=variant)
    assert math.isnan(got["auroc"]) and math.isnan(got["aupro"])
    assert got["ap"] == got["f1max"] == 1.0
    assert set(got.reasons) == {"auroc", "aupro"}


def test_loop_variants_without_usable_thresholds_are_nan_with_a_reason() -> None:
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True
    constant = pixel_metrics(np.ones((2, 4, 4), np.float32), masks, aupro_variant="cflow_loop")
    assert math.isnan(constant["aupro"]) and "constant" in constant.reasons["aupro"]
    inverted = np.where(masks, 0.0, 1.0).astype(np.float32)  # every threshold has FPR 1
    got = pixel_metrics(inverted, masks, aupro_variant="sowa")
    assert math.isnan(got["aupro"]) and "FPR < 0.3" in got.reasons["aupro"]
    assert got["auroc"] == 0.0 and got.reasons.keys() == {"aupro"}
    full = masks.copy()
    full[1] = True  # an image without normal pixels: SOWA's per-image FPR is 0/0
    got = pixel_metrics(np.random.default_rng(0).random((2, 4, 4)), full, aupro_variant="sowa")
    assert math.isnan(got["aupro"]) and "per-image FPR" in got.reasons["aupro"]
    assert not math.isnan(aupro(np.random.default_rng(0).random((2, 4, 4)), full, variant="cflow_loop"))


def test_category_metrics_uses_the_fixed_vocabulary() -> None:
    maps, masks = blob_maps(5, 16, seed=12)
    scores, labels = maps.max(axis=(1, 2)), masks.any(axis=(1, 2))
    got = category_metrics(scores, labels, maps, masks)
    assert tuple(got) == QUALITY_METRICS
    assert got["aupro"] == aupro(maps, masks)
    assert got["image_auroc"] == image_metrics(scores, labels)["auroc"]
    assert got["pixel_ap"] == pixel_metrics(maps, masks)["ap"]
    normal_only = category_metrics(scores, np.zeros(5, bool), maps, np.zeros(maps.shape, bool))
    assert all(math.isnan(v) for v in normal_only.values())
    assert normal_only.reasons["image_auroc"] == "no anomalous image"
    assert normal_only.reasons["pixel_f1max"] == "no anomalous pixel"
    assert set(normal_only.reasons) == set(QUALITY_METRICS)


def test_invalid_inputs_are_rejected() -> None:
    maps, masks = blob_maps(2, 8, seed=13)
    with pytest.raises(ValueError, match="variant"):
        aupro(maps, masks, variant="anomalib")
    with pytest.raises(ValueError, match="limit"):
        aupro(maps, masks, limit=0.0)
    with pytest.raises(ValueError, match="0/1"):
        pixel_metrics(maps, masks * 0.7)
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(np.full_like(maps, np.nan), masks)
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(maps, masks[:1])


@pytest.mark.parametrize("variant", AUPRO_VARIANTS)
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_scores_are_rejected_with_a_clear_message(variant: str, bad: float) -> None:
    # +-inf would break the loop variants' min-max threshold grid (a bare numpy ValueError before).
    maps, masks = blob_maps(2, 8, seed=13)
    maps[0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"anomaly maps contain non-finite values \(0 NaN, 1 ±inf\)"):
        pixel_metrics(maps, masks, variant)
    scores = np.array([0.1, bad, 0.3, np.nan])
    with pytest.raises(ValueError, match=r"image scores contain non-finite values \(1 NaN, 1 ±inf\)"):
        image_metrics(scores, np.array([0, 1, 0, 1]))


def test_large_finite_scores_are_accepted() -> None:
    maps, masks = blob_maps(2, 8, seed=13)
    huge = maps.astype(np.float64) * 2.0**1000  # a power of two: exact, every rank and tie kept
    assert np.isfinite(huge).all() and pixel_metrics(huge, masks) == pixel_metrics(maps, masks)

