"""The reduced smoke run and the footprint of every method at paper resolution (issue 17).

    python -m sowa_lib.smoke [--results-dir DIR] [--device cpu|cuda] [--threads N]

The smoke profile (:func:`sowa_lib.profiles.smoke_profile`: the paper profile with random weights,
fabricated data, one training step and one seed) on one category of one benchmark layout per
method family, zero-shot and K = 1 where the method has both: each step trains what it needs
(April-GAN's heads, SOWA's adapters, AGPNet's decoder), evaluates through
:func:`sowa_lib.evaluate.run_plan` into the results store, and runs in a fresh process so that
its wall time and peak memory are its own. Then every table is built from the store. It prints,
per method, the numbers a user needs to size a machine: seconds and peak resident memory (and
peak GPU memory on CUDA) at the paper's resolution, training included.

``make smoke-ci`` runs this alone (the CI budget); ``make smoke`` runs every notebook on the smoke
profile first, then this for the footprints.
"""
from __future__ import annotations

import argparse
import multiprocessing
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sowa_lib import runs, tables
from sowa_lib.ablations import official_checkpoint
from sowa_lib.evaluate import Plan, run_plan
from sowa_lib.preflight import prepare
from sowa_lib.profiles import get_profile, profile_note


@dataclass(frozen=True)
class Step:
    """One method family's reduced smoke: its plans, all on one (dataset, category); ``name`` is
    the method's, or ``method:variant`` for a variant (what ``--only`` selects)."""

    name: str
    dataset: str
    category: str
    plans: tuple[Plan, ...]


def _plans(method: str, dataset: str, category: str, settings: tuple[tuple[str, int], ...], variant: str = "default",
           overrides: dict[str, Any] | None = None) -> Step:
    plans = tuple(Plan(method, setting, (dataset,), shots=(shots,), categories=(category,), variant=variant, overrides=overrides or {})
                  for setting, shots in settings)
    return Step(method if variant == "default" else f"{method}:{variant}", dataset, category, plans)


ZERO_AND_ONE_SHOT = (("zero_shot", 0), ("few_shot", 1))
#: One layout per family: the CLIP methods on MVTec-AD, VisA and BTAD (April-GAN trains on MVTec-AD's
#: test split with mosaic, SOWA on VisA's), AGPNet on MVTec 3D-AD, the CNN baselines on DAGM and
#: DTD-Synthetic. ``april_gan:official_weights`` evaluates the stand-in of the authors' heads trained on
#: MVTec-AD (official format, random values) instead of training: April-GAN's ViT-L at 518 px without
#: its training step, the part of it CI's budget holds.
STEPS: tuple[Step, ...] = (
    _plans("winclip", "btad", "01", ZERO_AND_ONE_SHOT),
    _plans("april_gan", "visa", "candle", ZERO_AND_ONE_SHOT),
    _plans("april_gan", "visa", "candle", ZERO_AND_ONE_SHOT, "official_weights",
           {"checkpoint": official_checkpoint("smoke", "april_gan", "visa")}),
    _plans("sowa", "mvtec", "bottle", ZERO_AND_ONE_SHOT),
    _plans("agpnet", "mvtec3d", "bagel", (("multi_class", 0),)),
    _plans("patchcore", "dagm", "Class1", (("few_shot", 1),)),
    _plans("padim", "dtd_synthetic", "Woven_001", (("few_shot", 1),)),
    _plans("spade", "dtd_synthetic", "Woven_001", (("few_shot", 1),)),
)


def run_step(step: Step, results_dir: str, device: str, threads: int) -> dict[str, Any]:
    """Run ``step`` in this process; its wall seconds, peak memory and the image size it ran at."""
    torch.set_num_threads(threads)
    profile = get_profile("smoke", results_dir=results_dir, device=device)
    start = time.perf_counter()
    results = [run_plan(plan, profile, progress=False) for plan in step.plans]
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak_gb = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 2**20
    gpu_gb = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"step": step.name, "layout": f"{step.dataset}/{step.category}", "settings": ", ".join(
        f"{p.setting} K={p.shots[0]}" for p in step.plans), "seconds": seconds, "peak_rss_gb": peak_gb, "peak_gpu_gb": gpu_gb,
        "runs": sum(len(frame.drop_duplicates(["dataset", "category", "setting", "shots", "seed"])) for frame in results)}


def run_isolated(step: Step, results_dir: str, device: str, threads: int) -> dict[str, Any]:
    """:func:`run_step` in a fresh spawned process, so that the peak memory is the step's alone."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_step, step, results_dir, device, threads).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default=None, help="default: a new temporary folder (the runs are timed, not reused)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", nargs="*", help=f"steps to run, of: {' '.join(step.name for step in STEPS)}")
    args = parser.parse_args(argv)
    if unknown := set(args.only or ()) - {step.name for step in STEPS}:
        parser.error(f"no smoke step called {', '.join(sorted(unknown))}; the steps: {' '.join(step.name for step in STEPS)}")
    results_dir = args.results_dir or tempfile.mkdtemp(prefix="sowa-smoke-")
    profile = get_profile("smoke", results_dir=results_dir, device=args.device)
    prepare(profile)
    print(f"smoke ({profile_note('smoke')}): results in {profile.run_dir}; {args.threads} threads on {args.device}", flush=True)
    total, rows = time.perf_counter(), []
    for step in STEPS:
        if args.only and step.name not in args.only:
            continue
        row = run_isolated(step, results_dir, args.device, args.threads)
        rows.append(row)
        print(f"  {row['step']:<28} {row['layout']:<24} {row['settings']:<26} {row['seconds']:7.1f} s  "
              f"peak {row['peak_rss_gb']:.2f} GB RSS" + (f", {row['peak_gpu_gb']:.2f} GB GPU" if args.device.startswith("cuda") else ""), flush=True)
    results = runs.load_results(profile.run_dir)
    written = tables.build_all(results, profile.name, profile.run_dir / "tables")
    print(pd.DataFrame(rows).round(2).to_string(index=False))
    print(f"smoke: {len(results)} result rows, {len(written)} table files in {profile.run_dir / 'tables'}; "
          f"{time.perf_counter() - total:.0f} s in all (measured; {profile_note('smoke')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
