"""Seconds per image of each method on this CPU, with the real architecture's shape and random
weights, and the ratio to one plain backbone forward at the same resolution.

    python benchmarks/methods.py [--quick] [--images 2] [--threads 2] [--only winclip april_gan]

One row per :class:`Entry` in :data:`ENTRIES`; add a method by appending an entry (its registry name,
build overrides for the paper-shape model with ``pretrained=None``, the number of shots, and how to
run its plain backbone forward). ``--quick`` runs one image and the ``quick`` overrides (smaller
resolutions where the paper's is expensive), so the whole table takes a few minutes.
Text features are computed in a warm-up call and not timed; reference encoding is not timed.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from sowa_lib.methods import build
from sowa_lib.methods.base import AnomalyMethod


def clip_forward(method: AnomalyMethod, images: torch.Tensor) -> None:
    """One plain forward of a CLIP-based method's image encoder (no taps, no heads)."""
    method.clip.encode_image(images)


def dino_forward(method: AnomalyMethod, images: torch.Tensor) -> None:
    """One plain forward of AGPNet's frozen timm DINO ViT (all blocks and the final norm)."""
    method.extractor.backbone.model.forward_features(images)


def cnn_forward(method: AnomalyMethod, images: torch.Tensor) -> None:
    """One plain forward of a CNN baseline's frozen backbone through its last stage."""
    method.backbone(images, ("layer4",))


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
    plain_forward: Callable[[AnomalyMethod, torch.Tensor], None] = clip_forward
    paper_efficiency: PaperEfficiency | None = None


ENTRIES: list[Entry] = [
    Entry("WinCLIP zero-shot (ViT-B-16-plus-240)", "winclip", {"pretrained": None}),
    Entry("WinCLIP+ 1-shot (ViT-B-16-plus-240)", "winclip", {"pretrained": None}, shots=1),
    Entry("April-GAN zero-shot (ViT-L-14-336)", "april_gan", {"pretrained": None}, quick={"image_size": 336}),
    Entry("April-GAN 1-shot (ViT-L-14-336)", "april_gan", {"pretrained": None}, shots=1, quick={"image_size": 336}),
    Entry("SOWA zero-shot (ViT-L-14-336, 336px)", "sowa", {"pretrained": None}),
    Entry("SOWA 4-shot (ViT-L-14-336, 336px)", "sowa", {"pretrained": None}, shots=4),
    Entry("AGPNet multi-class (DINO ViT-S/16, 256px)", "agpnet", {"pretrained": None},
          plain_forward=dino_forward, paper_efficiency=PaperEfficiency(4.42, 5.63, 326.65)),
    Entry("SPADE 4-shot (WRN-50-2, 256px)", "spade", {"pretrained": None}, shots=4, plain_forward=cnn_forward),
    Entry("PaDiM 4-shot (WRN-50-2, 256px)", "padim", {"pretrained": None}, shots=4, plain_forward=cnn_forward),
    Entry("PatchCore 4-shot (WRN-50-2, 256px)", "patchcore", {"pretrained": None}, shots=4, plain_forward=cnn_forward),
]


_built: dict[str, AnomalyMethod] = {}


def built(name: str, options: dict[str, Any]) -> AnomalyMethod:
    """Entries that differ only in shots share one model (random init of ViT-L takes a while)."""
    key = f"{name}:{sorted(options.items())}"
    if key not in _built:
        _built[key] = build(name, **options).eval()
    return _built[key]


def seconds_per_image(run: Callable[[], Any], n_images: int, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / n_images


@torch.no_grad()
def measure(entry: Entry, n_images: int, quick: bool, repeats: int) -> tuple[int, float, float]:
    """(resolution, method s/image, plain-forward s/image) of one entry."""
    method = built(entry.method, {**entry.options, **(entry.quick if quick else {})})
    size = method.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n_images, 3, size, size, generator=generator)
    method.set_references(torch.randn(entry.shots, 3, size, size, generator=generator), "bottle")
    method.predict(images[:1], "bottle")  # warm-up: text features, allocator
    method_time = seconds_per_image(lambda: method.predict(images, "bottle"), n_images, repeats)
    plain_time = seconds_per_image(lambda: entry.plain_forward(method, images), n_images, repeats)
    return size, method_time, plain_time


@torch.no_grad()
def learnable_params_and_gflops(entry: Entry) -> tuple[float, float]:
    """(learnable parameters in millions, GFLOPs of one ``predict`` on one image) of the paper-shape
    model; FLOPs by ``torch.utils.flop_counter`` (a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    method = build(entry.method, **entry.options).eval()
    params = sum(p.numel() for p in method.parameters() if p.requires_grad) / 1e6
    size = method.image_size
    method.set_references(torch.randn(entry.shots, 3, size, size), "bottle")
    with FlopCounterMode(display=False) as counter:
        method.predict(torch.randn(1, 3, size, size), "bottle")
    return params, counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one image, smaller resolutions where the paper's is slow")
    parser.add_argument("--images", type=int, default=2, help="images per timed batch (1 with --quick)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", nargs="*", help="registry names to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_images = 1 if args.quick else args.images
    print(f"CPU, {args.threads} threads, {n_images} image(s), random weights{' (quick)' if args.quick else ''}")
    print(f"{'method':<48} {'px':>4} {'s/image':>9} {'plain fwd':>9} {'ratio':>6}")
    for entry in ENTRIES:
        if args.only and entry.method not in args.only:
            continue
        size, method_time, plain_time = measure(entry, n_images, args.quick, args.repeats)
        print(f"{entry.label:<48} {size:>4} {method_time:>9.3f} {plain_time:>9.3f} {method_time / plain_time:>6.2f}", flush=True)
        if entry.paper_efficiency:
            params, gflops = learnable_params_and_gflops(entry)
            paper = entry.paper_efficiency
            print(f"    {1 / method_time:.1f} images/s here (paper {paper.fps} FPS on an RTX 4090, batch 32); "
                  f"learnable {params:.2f} M (paper {paper.learnable_params_m} M); {gflops:.2f} GFLOPs = "
                  f"{gflops / 2:.2f} GMACs per image (paper {paper.gflops} G)", flush=True)


if __name__ == "__main__":
    main()
