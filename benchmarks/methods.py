"""Seconds per image of each method on this CPU, with the real architecture's shape and random
weights, and the ratio to one plain backbone forward at the same resolution.

    python benchmarks/methods.py [--quick] [--images 2] [--threads 2] [--only winclip april_gan]

One row per :class:`Entry` in :data:`ENTRIES`; add a method by appending an entry (its registry name,
build overrides for the paper-shape model with ``pretrained=None``, the number of shots, and the
paper's efficiency claim if any; the plain backbone forward is the one the method declares,
:meth:`~sowa_lib.methods.base.AnomalyMethod.frozen_forward`). ``--quick`` runs one image and the ``quick`` overrides (smaller
resolutions where the paper's is expensive), so the whole table takes a few minutes.
Timing protocol: :func:`sowa_lib.speed.measure` (batch 1, references and text features set before
timing, warm-up excluded).
"""
from __future__ import annotations

import argparse
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sowa_lib import speed
from sowa_lib.methods import build
from sowa_lib.methods.base import AnomalyMethod


@dataclass(frozen=True)
class PaperEfficiency:
    """A paper's efficiency claim (AGPNet Table 9: RTX 4090, batch 32)."""

    learnable_params_m: float
    gflops: float
    fps: float


@dataclass(frozen=True)
class Entry:
    label: str
    method: str
    options: dict[str, Any]
    shots: int = 0
    quick: dict[str, Any] = field(default_factory=dict)
    paper_efficiency: PaperEfficiency | None = None
    target_ratio: float | None = None  # SOWA at K=4 / April-GAN few-shot within 1.10× one plain ViT-L-14-336 forward
    memory_budget_gb: float | None = None  # issue 4: the baselines at K=4, 256 px stay under 2 GB


ENTRIES: list[Entry] = [
    Entry("WinCLIP zero-shot (ViT-B-16-plus-240)", "winclip", {"pretrained": None}),
    Entry("WinCLIP+ 1-shot (ViT-B-16-plus-240)", "winclip", {"pretrained": None}, shots=1),
    Entry("April-GAN zero-shot (ViT-L-14-336)", "april_gan", {"pretrained": None}, quick={"image_size": 336}),
    Entry("April-GAN 1-shot (ViT-L-14-336)", "april_gan", {"pretrained": None}, shots=1, quick={"image_size": 336}, target_ratio=1.10),
    Entry("SOWA zero-shot (ViT-L-14-336, 336px)", "sowa", {"pretrained": None}),
    Entry("SOWA 4-shot (ViT-L-14-336, 336px)", "sowa", {"pretrained": None}, shots=4, target_ratio=1.10),
    Entry("AGPNet multi-class (DINO ViT-S/16, 256px)", "agpnet", {"pretrained": None}, paper_efficiency=PaperEfficiency(4.42, 5.63, 326.65)),
    Entry("SPADE 4-shot (WRN-50-2, 256px)", "spade", {"pretrained": None}, shots=4, memory_budget_gb=2.0),
    Entry("PaDiM 4-shot (WRN-50-2, 256px)", "padim", {"pretrained": None}, shots=4, memory_budget_gb=2.0),
    Entry("PatchCore 4-shot (WRN-50-2, 256px)", "patchcore", {"pretrained": None}, shots=4, memory_budget_gb=2.0),
]


_built: dict[str, AnomalyMethod] = {}


def built(name: str, options: dict[str, Any]) -> AnomalyMethod:
    """Entries that differ only in shots share one model (random init of ViT-L takes a while)."""
    key = f"{name}:{sorted(options.items())}"
    if key not in _built:
        _built[key] = build(name, **options).eval()
    return _built[key]


def decoder_gflops(method: AnomalyMethod) -> float:
    """GFLOPs of AGPNet's decoder alone on one image's target tokens: the learnable part, which
    Table 9's count may be limited to (the frozen DINO forward is most of a whole ``predict``)."""
    tokens = torch.randn(1, method.decoder_shape["tokens"], method.decoder_shape["feature_dim"], device=method.device)
    return speed.gflops(lambda: method.decoder(tokens))


def measure_entry(entry: Entry, n_images: int, quick: bool, repeats: int) -> tuple[int, dict[str, float]]:
    """(resolution, :func:`sowa_lib.speed.measure` of the entry on random images and references)."""
    method = built(entry.method, {**entry.options, **(entry.quick if quick else {})})
    size = method.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n_images, 3, size, size, generator=generator)
    references = torch.randn(entry.shots, 3, size, size, generator=generator)
    return size, speed.measure(method, images, references, "bottle", repeats)


def peak_memory_gb(entry: Entry, quick: bool, threads: int) -> float:
    """Peak resident memory of a fresh process that builds the entry's method, sets its references and
    scores one image: the whole process with Python and torch, an upper bound (Linux only)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measured_peak_rss_gb, entry, quick, threads).result()


def _measured_peak_rss_gb(entry: Entry, quick: bool, threads: int) -> float:
    torch.set_num_threads(threads)
    measure_entry(entry, 1, quick, 1)
    # VmHWM is this process image's own peak; ru_maxrss would also carry the parent's peak, which a
    # spawned child inherits through the fork that precedes its exec
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one image, smaller resolutions where the paper's is slow")
    parser.add_argument("--images", type=int, default=2, help="images per timed batch (1 with --quick)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per entry; the best counts (a loaded CPU is noisy)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", nargs="*", help="registry names to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_images = 1 if args.quick else args.images
    print(f"CPU, {args.threads} threads, {n_images} image(s), random weights{' (quick)' if args.quick else ''}")
    print(f"{'method':<48} {'px':>4} {'s/image':>9} {'plain fwd':>9} {'ratio':>6} {'cpu ratio':>9}")
    for entry in ENTRIES:
        if args.only and entry.method not in args.only:
            continue
        size, timing = measure_entry(entry, n_images, args.quick, args.repeats)
        method_time = timing["seconds_per_image"]
        print(f"{entry.label:<48} {size:>4} {method_time:>9.3f} {timing['plain_seconds_per_image']:>9.3f} "
              f"{timing['ratio']:>6.2f} {timing['cpu_ratio']:>9.2f}", flush=True)
        if entry.target_ratio is not None:
            # judged by CPU time: on a CPU shared with other work, wall time swings with the load
            verdict = "pass" if timing["cpu_ratio"] <= entry.target_ratio else "FAIL"
            print(f"    target ≤ {entry.target_ratio:.2f} at K={entry.shots} (cpu ratio): {verdict} ({timing['cpu_ratio']:.2f})", flush=True)
        if entry.memory_budget_gb is not None:
            peak = peak_memory_gb(entry, args.quick, args.threads)
            verdict = "pass" if peak <= entry.memory_budget_gb else "FAIL"
            print(f"    peak memory at K={entry.shots}, {size}px: {peak:.2f} GB, whole process (budget {entry.memory_budget_gb} GB): {verdict}", flush=True)
        if entry.paper_efficiency:
            method = built(entry.method, entry.options)
            params, gflops = speed.learnable_params_and_gflops(method, entry.shots)
            paper = entry.paper_efficiency
            print(f"    {1 / method_time:.1f} images/s here (paper {paper.fps} FPS on an RTX 4090, batch 32); "
                  f"learnable {params:.2f} M (paper {paper.learnable_params_m} M); {gflops:.2f} GFLOPs = "
                  f"{gflops / 2:.2f} GMACs per image for the whole predict, {decoder_gflops(method):.2f} GFLOPs for "
                  f"the decoder alone (paper {paper.gflops} G; the gap: sowa_lib/methods/agpnet/__init__.py docstring)", flush=True)


if __name__ == "__main__":
    main()
