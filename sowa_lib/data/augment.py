"""2×2 mosaic augmentation of April-GAN and SOWA (spec april_gan_winclip_peers §1.7; sowa §2.4).

With probability ``rate`` a training sample is replaced by a mosaic of four images of its category's
test split: each tile picks a defect type uniformly (``good`` included), then a file of that type.
Tiles are pasted row-major into a canvas twice the first tile's size; the masks likewise. The
mosaic then goes through the method's usual resize. Sampling is uniform over defect types, not over
images, as in the reference code.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

import numpy as np
from PIL import Image

from sowa_lib.data.sample import Sample


def group_by_defect(samples: Sequence[Sample]) -> dict[str, dict[str, list[Sample]]]:
    """``{category: {defect: [samples sorted by path]}}``, the pools mosaic tiles are drawn from."""
    pools: dict[str, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for sample in sorted(samples, key=lambda s: s.relpath):
        pools[sample.category][sample.defect].append(sample)
    return {category: dict(defects) for category, defects in pools.items()}


def draw_tiles(pools: dict[str, list[Sample]], rng: random.Random, tiles: int = 4) -> list[Sample]:
    """``tiles`` samples: defect type uniform, then file uniform within it."""
    defects = sorted(pools)
    return [rng.choice(pools[rng.choice(defects)]) for _ in range(tiles)]


def _tile(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize ``array`` to ``size`` (width, height) unless it already has it."""
    if array.shape[1] == size[0] and array.shape[0] == size[1]:
        return array
    if array.dtype == bool:
        return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(size, resample)) > 127
    return np.asarray(Image.fromarray(array).resize(size, resample))


def mosaic(tiles: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 ``[2H, 2W, 3]`` and bool mask ``[2H, 2W]`` from four tiles, row-major.

    All tiles take the first tile's size (the reference pastes into a canvas of that size; our
    generated and real categories have one image size per category, so this resize is a no-op there).
    """
    images = [t.read_image() for t in tiles]
    masks = [t.read_mask() for t in tiles]
    size = (images[0].shape[1], images[0].shape[0])
    images = [_tile(im, size, Image.BICUBIC) for im in images]
    masks = [_tile(m, size, Image.NEAREST) for m in masks]
    image = np.concatenate([np.concatenate(images[:2], axis=1), np.concatenate(images[2:], axis=1)], axis=0)
    mask = np.concatenate([np.concatenate(masks[:2], axis=1), np.concatenate(masks[2:], axis=1)], axis=0)
    return image, mask
