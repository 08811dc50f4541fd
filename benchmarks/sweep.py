"""Encoder forward passes and wall time of one category's few-shot sweep, with and without the
frozen-feature cache (issue #15; :mod:`sowa_lib.features`). Prints measured counts and ratios.

    python benchmarks/sweep.py [--shape demo paper] [--methods winclip sowa ...] [--shots 1 2 4]
                               [--seeds 0 1 2] [--images 2] [--threads 2]

``demo``: the runner itself (:func:`sowa_lib.evaluate.run_plan`) on the demo profile, one category,
every method, K × seeds, in a temporary results folder; trainings (April-GAN, SOWA) are done once
before timing and loaded by both sweeps, AGPNet's few-shot training (on the references) is part of
both. ``paper``: the paper architectures and resolutions with random weights, driven as the runner
drives them (:func:`sowa_lib.evaluate.predict_with_references`) on ``--images`` test images and the
category's normal images as the reference pool; heads/adapters/decoders stay untrained, AGPNet runs
multi-class (its few-shot mode trains). Both print, per mode, the images the frozen encoders ran on
(forward passes, one image each), the distinct (encoder, image) pairs counted from the data (each
method's test tensors and every drawn reference, by content hash, per encoder fingerprint), wall
and process-CPU seconds, the seconds the frozen encoders ran (``features.STATS.seconds``) and the
ratios cached / uncached; then the lowest wall ratio any cache of frozen encodings could reach, the
uncached wall time less its encoder time over the uncached wall time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sowa_lib import features
from sowa_lib.backbones.clip import ClipBackbone
from sowa_lib.backbones.cnn import TappedCNN
from sowa_lib.backbones.dino import DinoBackbone
from sowa_lib.data.sample import Sample
from sowa_lib.data.transforms import load_images
from sowa_lib.evaluate import Plan, _SampleCache, predict_with_references, references, run_plan
from sowa_lib.methods import build
from sowa_lib.methods.base import AnomalyMethod
from sowa_lib.methods.winclip import WinCLIP
from sowa_lib.preflight import prepare
from sowa_lib.profiles import get_profile

METHODS = ["winclip", "april_gan", "sowa", "spade", "padim", "patchcore", "agpnet"]
DATASET, CATEGORY = "demo_a", "brick"
#: Paper-shape builds (random weights); AGPNet multi-class, since its few-shot mode trains.
PAPER_OPTIONS: dict[str, dict[str, Any]] = {"agpnet": {"setting": "multi_class"}}


def encoder_key(method: AnomalyMethod) -> str:
    """Fingerprint of the frozen module whose encodings ``method`` asks the cache for."""
    for module in method.modules():
        if isinstance(module, ClipBackbone):
            return features.fingerprint(module.visual) + ("/winclip" if isinstance(method, WinCLIP) else "")
        if isinstance(module, DinoBackbone):
            return features.fingerprint(module.model)
        if isinstance(module, TappedCNN):
            return features.fingerprint(module)
    raise TypeError(f"no frozen backbone found in {type(method).__name__}")


def distinct_pairs(method: AnomalyMethod, test: list[Sample], draws: list[list[Sample]]) -> set[tuple[str, str]]:
    """(encoder, image content hash) of the test images and of every drawn reference (none for
    methods that train on their references: those encodings are not cached)."""
    drawn = [] if method.trains_on_references else [r for refs in draws for r in refs]
    images = load_images([*test, *drawn], method.image_size, method.normalization, method.interpolation)
    return {(encoder_key(method), features._tensor_hash(x)) for x in images}


def drawn_references(method: AnomalyMethod, samples: _SampleCache, shots: list[int], seeds: list[int]) -> list[list[Sample]]:
    """The category's K-shot references of every (K, seed), drawn as the runner draws them for ``method``
    (its configuration's sampling law)."""
    replacement = method.draws_references_with_replacement(method.config())
    return [references(samples, DATASET, CATEGORY, k, s, replacement) for k in shots for s in seeds]


def demo_sweep(study, names: list[str], shots: list[int], seeds: list[int]) -> dict[str, Any]:
    """Both modes of the runner's sweep; returns the per-mode measurements and the distinct count."""
    plans = [Plan(m, "few_shot", (DATASET,), shots=tuple(shots), seeds=tuple(seeds), categories=(CATEGORY,)) for m in names]
    runs_dir, checkpoints = study.run_dir / "runs", study.run_dir / "checkpoints"
    os.environ[features.FEATURE_CACHE_ENV] = "off"
    for plan in plans:  # trainings once, outside the timed sweeps
        run_plan(Plan(plan.method, "few_shot", plan.datasets, shots=(1,), seeds=(0,), categories=plan.categories), study, progress=False)
    shutil.rmtree(runs_dir)
    out: dict[str, Any] = {}
    for mode in ("off", "memory"):
        shutil.rmtree(checkpoints / "agpnet", ignore_errors=True)  # AGPNet few-shot trains in both sweeps
        os.environ[features.FEATURE_CACHE_ENV] = mode
        features.STATS.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        for plan in plans:
            run_plan(plan, study, progress=False)
        out[mode] = _measured(wall, cpu)
        shutil.rmtree(runs_dir)
    samples = _SampleCache(study)
    test = samples.samples(DATASET, CATEGORY, "test")
    pairs: set = set()
    for name in names:
        method = build(name, profile="demo")
        pairs |= distinct_pairs(method, test, drawn_references(method, samples, shots, seeds))
    out["distinct"] = len(pairs)
    return out


def paper_sweep(study, names: list[str], shots: list[int], seeds: list[int], n_images: int) -> dict[str, Any]:
    """Both modes at paper shape (random weights), each (K, seed) run driven as the runner drives it;
    AGPNet (multi-class) predicts without references in each run."""
    samples = _SampleCache(study)
    test = samples.samples(DATASET, CATEGORY, "test")[:n_images]
    built = {m: build(m, profile="paper", pretrained=None, **PAPER_OPTIONS.get(m, {})).eval() for m in names}
    draws = {m: [[] for _ in shots for _ in seeds] if m in PAPER_OPTIONS else drawn_references(method, samples, shots, seeds)
             for m, method in built.items()}
    out: dict[str, Any] = {}
    for mode in ("off", "memory"):
        cache = features.FeatureCache() if mode == "memory" else None
        features.STATS.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        for name, method in built.items():
            images = load_images(test, method.image_size, method.normalization, method.interpolation)
            for refs in draws[name]:
                predict_with_references(method, refs, images, CATEGORY, study.batch_size, cache)
        out[mode] = _measured(wall, cpu)
    out["distinct"] = len(set().union(*(distinct_pairs(method, test, draws[m]) for m, method in built.items())))
    return out


def _measured(wall: float, cpu: float) -> dict[str, Any]:
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            "forwards": features.STATS.total_encoded(), "served": sum(features.STATS.served.values()),
            "by_encoder": dict(features.STATS.encoded), "encoder_s": sum(features.STATS.seconds.values())}


def report(shape: str, result: dict[str, Any]) -> None:
    off, cached = result["off"], result["memory"]
    print(f"\n== {shape}: one category ({DATASET}/{CATEGORY}) few-shot sweep")
    print(f"{'mode':<8} {'forward passes':>15} {'served':>8} {'wall s':>8} {'cpu s':>8} {'encoder s':>10}")
    for mode in ("off", "memory"):
        m = result[mode]
        print(f"{mode:<8} {m['forwards']:>15} {m['served']:>8} {m['wall']:>8.1f} {m['cpu']:>8.1f} {m['encoder_s']:>10.1f}")
    print(f"distinct (encoder, image) pairs counted from the data: {result['distinct']}")
    print(f"cached forward passes == distinct pairs: {cached['forwards'] == result['distinct']}")
    print(f"forward passes cached / uncached: {cached['forwards'] / off['forwards']:.3f}")
    print(f"wall time cached / uncached: {cached['wall'] / off['wall']:.3f}  (process CPU: {cached['cpu'] / off['cpu']:.3f})")
    print(f"lowest wall ratio of any cache (every uncached encoding free): {(off['wall'] - off['encoder_s']) / off['wall']:.3f}")
    for label in sorted(off["by_encoder"]):
        print(f"  {label:<45} {off['by_encoder'][label]:>6} -> {cached['by_encoder'].get(label, 0):>5}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=2, help="paper shape: test images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU threads; methods {' '.join(args.methods)}; "
          f"K {args.shots}, seeds {args.seeds}")
    with tempfile.TemporaryDirectory() as results:
        study = get_profile("demo", results_dir=Path(results))
        prepare(study, [DATASET])
        if "demo" in args.shape:
            report("demo", demo_sweep(study, args.methods, args.shots, args.seeds))
        if "paper" in args.shape:
            report(f"paper shape, random weights, {args.images} test images", paper_sweep(study, args.methods, args.shots, args.seeds, args.images))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
