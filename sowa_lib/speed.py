"""Inference speed of a method, and its ratio to one plain forward of its frozen backbone at the same
resolution (issue: notebook 05 and ``benchmarks/methods.py``).

Protocol (sowa spec §4.4, "re-measure under stated, identical settings"): references set and text
features computed before timing (one untimed warm-up ``predict``), then the best of ``repeats``
timed calls, the method and the plain forward alternating; no visualisation, no data loading, the
category-level step excluded. The plain forward is the one each method declares,
:meth:`~sowa_lib.methods.base.AnomalyMethod.frozen_forward`.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from sowa_lib.methods.base import AnomalyMethod


def timed_call(run: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call, CUDA synchronised when available. On a CPU
    shared with other work, CPU time is the steadier measure: it does not count time spent waiting."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(method: AnomalyMethod, images: torch.Tensor, references: torch.Tensor, category: str = "object", repeats: int = 3) -> dict[str, float]:
    """Seconds per image of ``predict`` on ``images`` one at a time (batch 1), of the plain backbone
    forward, their ratio (wall time, and process CPU time), and images per second.

    Each repeat times ``predict`` and the plain forward back to back, so that both see the same
    machine load; the best of ``repeats`` counts for each. ``set_references`` is not timed (AGPNet
    trains there)."""
    method.eval()
    images, references = images.to(method.device), references.to(method.device)
    method.set_references(references, category)
    best = {"predict": (float("inf"), float("inf")), "plain": (float("inf"), float("inf"))}
    calls = {"predict": lambda: [method.predict(x[None], category) for x in images],
             "plain": lambda: [method.frozen_forward(x[None]) for x in images]}
    with torch.no_grad():
        method.predict(images[:1], category)  # warm-up: text features, allocator, kernels
        method.frozen_forward(images[:1])
        for _ in range(repeats):
            for name, call in calls.items():
                wall, cpu = timed_call(call)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    (predict, predict_cpu), (plain, plain_cpu) = best["predict"], best["plain"]
    return {"seconds_per_image": predict / len(images), "plain_seconds_per_image": plain / len(images),
            "ratio": predict / plain, "cpu_ratio": predict_cpu / plain_cpu, "images_per_second": len(images) / predict}


@torch.no_grad()
def gflops(call: Callable[[], Any]) -> float:
    """GFLOPs of one ``call``, counted by ``torch.utils.flop_counter`` (a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops() / 1e9


@torch.no_grad()
def learnable_params_and_gflops(method: AnomalyMethod, shots: int = 0) -> tuple[float, float]:
    """(learnable parameters in millions, :func:`gflops` of one ``predict`` on one image)."""
    params = sum(p.numel() for p in method.parameters() if p.requires_grad) / 1e6
    size = method.image_size
    method.set_references(torch.randn(shots, 3, size, size, device=method.device), "object")
    return params, gflops(lambda: method.predict(torch.randn(1, 3, size, size, device=method.device), "object"))
