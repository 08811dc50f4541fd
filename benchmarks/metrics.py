"""Speed and agreement of sowa_lib.metrics against the way the reference codebases compute them.

Reference way (April-GAN / SOWA test scripts, specs/datasets_metrics_agpnet.md §3.3, §3.6, §3.7):
scikit-learn ``roc_auc_score``, ``average_precision_score`` and ``precision_recall_curve`` on the
image scores and on the pooled pixels, plus the cflow-ad 200-threshold skimage loop for AUPRO.
Fast way: ``category_metrics`` (one shared sort, exact MVTec AUPRO, §3.1).

    python benchmarks/metrics.py [--n 200 --size 336] [--quick]

Prints timings, their ratio and the largest absolute difference between fast and reference values.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from sowa_lib.metrics import aupro, category_metrics


def synthetic_category(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed noise maps; 60% of images carry 1-3 elliptical defects that score higher (§3.4)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), bool)
    for i in np.flatnonzero(rng.random(n) < 0.6):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
            ry, rx = rng.uniform(0.02, 0.1, 2) * size
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    noise = ndimage.gaussian_filter(rng.normal(size=masks.shape).astype(np.float32), sigma=(0, 4, 4))
    maps = noise / noise.std() + 3 * ndimage.gaussian_filter(masks.astype(np.float32), sigma=(0, 4, 4))
    return maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), maps.astype(np.float32), masks


def sklearn_f1max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.max(f1[np.isfinite(f1)]))


def cflow_loop_aupro(maps: np.ndarray, masks: np.ndarray, max_step: int = 200, limit: float = 0.3) -> float:
    """The cal_pro_score loop of April-GAN / AnomalyCLIP (§3.3), as they write it."""
    pros, fprs = [], []
    min_th, max_th = maps.min(), maps.max()
    inverse = ~masks
    regions = [(i, r) for i, m in enumerate(masks) for r in measure.regionprops(measure.label(m))]
    for th in np.arange(min_th, max_th, (max_th - min_th) / max_step):
        binary = maps > th
        pros.append(np.mean([binary[i][r.coords[:, 0], r.coords[:, 1]].sum() / r.area for i, r in regions]))
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < limit
    kept = fprs[keep]
    return auc((kept - kept.min()) / (kept.max() - kept.min()), pros[keep])


def reference_metrics(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    pixels, truth = maps.ravel(), masks.ravel()
    return {
        "image_auroc": roc_auc_score(labels, scores),
        "image_ap": average_precision_score(labels, scores),
        "image_f1max": sklearn_f1max(labels, scores),
        "pixel_auroc": roc_auc_score(truth, pixels),
        "pixel_ap": average_precision_score(truth, pixels),
        "pixel_f1max": sklearn_f1max(truth, pixels),
        "aupro": cflow_loop_aupro(maps, masks),
    }


def timed(f: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = f()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of maps")
    parser.add_argument("--size", type=int, default=336, help="map side in pixels")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 maps of 96x96")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n, size = (20, 96) if args.quick else (args.n, args.size)
    scores, labels, maps, masks = synthetic_category(n, size, args.seed)
    print(f"{n} maps of {size}x{size} ({maps.size / 1e6:.1f} M pixels), {int(labels.sum())} anomalous images")

    fast, t_fast_first = timed(lambda: category_metrics(scores, labels, maps, masks))
    t_fast = min(timed(lambda: category_metrics(scores, labels, maps, masks))[1] for _ in range(3))
    fast_loop, t_fast_loop = timed(lambda: aupro(maps, masks, variant="cflow_loop"))
    ref, t_ref = timed(lambda: reference_metrics(scores, labels, maps, masks))

    print(f"fast, 7 metrics (mvtec AUPRO):    {t_fast:7.2f} s  best of 3 (first call {t_fast_first:.2f} s)")
    print(f"fast, AUPRO cflow_loop variant:   {t_fast_loop:7.2f} s")
    print(f"reference (sklearn + cflow loop): {t_ref:7.2f} s")
    print(f"speed-up: {t_ref / t_fast:.1f}x (first call: {t_ref / t_fast_first:.1f}x)")
    ranking = [k for k in fast if k != "aupro"]
    print(f"max |fast - sklearn| over {len(ranking)} ranking metrics: {max(abs(fast[k] - ref[k]) for k in ranking):.2e}")
    print(f"|fast cflow_loop - reference loop| AUPRO: {abs(fast_loop - ref['aupro']):.2e}")
    print(f"mvtec - cflow_loop AUPRO (definitions differ, §3.4): {fast['aupro'] - ref['aupro']:+.4f}")
    for k in fast:
        print(f"  {k:12s} fast {fast[k]:.6f}  reference {ref[k]:.6f}")


if __name__ == "__main__":
    main()
