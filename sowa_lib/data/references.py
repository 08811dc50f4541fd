"""K-shot reference draws shared by every method (datasets_metrics spec §4.4).

The same (dataset, category, K, seed) always gives the same files, whatever the method, so all
methods see identical references. The chosen relative paths are recorded with each run.

Stated departure from April-GAN's official draw (spec april_gan_winclip_peers §1.6): it seeds torch
once (42), builds the model, then calls ``torch.randint`` class after class in meta.json order, so
its files depend on the model's initialisation and on the earlier classes and cannot be reproduced
one run at a time. The sampling law is kept (``replacement=True``), not the exact files.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from sowa_lib.data.sample import Sample


def reference_seed(dataset: str, category: str, shots: int, seed: int) -> int:
    """A stable per-(dataset, category, K, seed) RNG seed, independent of category order.

    April-GAN seeds once and draws categories in order, so one category's draw depends on the
    previous ones (spec april_gan_winclip_peers §1.6); keying the seed makes draws reproducible alone.
    """
    digest = hashlib.sha256(f"{dataset}/{category}/{shots}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def draw_references(
    train: Sequence[Sample], shots: int, seed: int, *, replacement: bool = False
) -> list[Sample]:
    """Draw ``shots`` normal images from a category's train split.

    ``replacement=True`` follows April-GAN's ``torch.randint`` (duplicates possible); the default,
    without replacement, follows SOWA's ``random.sample`` and the faithful-protocol checklist (§4.4).
    Candidates are the normal images sorted by relative path, so the draw does not depend on the
    file system's listing order.
    """
    if shots == 0:
        return []
    normal = sorted((s for s in train if s.label == 0), key=lambda s: s.relpath)
    if not normal:
        raise ValueError("no normal training images to draw references from")
    if not replacement and shots > len(normal):
        raise ValueError(f"cannot draw {shots} references without replacement from {len(normal)} images")
    first = normal[0]
    rng = np.random.default_rng(reference_seed(first.dataset, first.category, shots, seed))
    picks = rng.integers(0, len(normal), shots) if replacement else rng.choice(len(normal), shots, replace=False)
    return [normal[int(i)] for i in picks]
