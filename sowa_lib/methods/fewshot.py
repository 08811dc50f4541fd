"""The few-shot recipe April-GAN and SOWA share (spec april_gan_winclip_peers §1.6; sowa §1.8).

- Pixel term: per layer, each query patch token's min(1 − cos) to a memory of the K references'
  tokens (all positions, all references pooled), upsampled bilinearly (``align_corners=True``) and
  **summed** over layers; the method adds it to its zero-shot map.
- Image term, per category after all its test images: ``0.5 · (text probability + min-max over the
  category of each image's map maximum)`` — transductive. ``image_score="raw"`` replaces the min-max
  with the raw maximum, so each image's score depends on that image alone.

Methods put the per-image pieces in ``Prediction.extras`` (``TEXT_SCORE``, ``MAP_MAX``) in
``predict`` and call :func:`finalize_few_shot` from ``finalize_category``.
"""
from __future__ import annotations

import torch

from sowa_lib.methods.base import Prediction
from sowa_lib.ops import MemoryBank, minmax, resize_maps, tokens_to_grid

TEXT_SCORE = "text_score"
MAP_MAX = "map_max"
IMAGE_SCORE_MODES = ("transductive_minmax", "raw")


def memory_distance_map(
    memory: MemoryBank, layer_tokens: list[torch.Tensor], image_size: int, align_corners: bool = True
) -> torch.Tensor:
    """``[N, S, S]``: Σ over layers of the upsampled min-distance maps of patch tokens ``[N, T, C]``."""
    distances = memory.distances(layer_tokens)
    return sum(resize_maps(tokens_to_grid(d), image_size, align_corners=align_corners) for d in distances)


def few_shot_image_scores(text_scores: torch.Tensor, map_maxima: torch.Tensor, mode: str) -> torch.Tensor:
    """``0.5 · (p + m̃)``, with ``m̃`` the category min-max of the map maxima (``"transductive_minmax"``)
    or the raw maxima (``"raw"``)."""
    if mode == "transductive_minmax":
        return 0.5 * (text_scores + minmax(map_maxima))
    if mode == "raw":
        return 0.5 * (text_scores + map_maxima)
    raise ValueError(f"unknown few-shot image score {mode!r}; use one of {IMAGE_SCORE_MODES}")


def few_shot_extras(text_scores: torch.Tensor, maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-image pieces :func:`finalize_few_shot` needs later."""
    return {TEXT_SCORE: text_scores, MAP_MAX: maps.flatten(1).max(dim=1).values}


def finalize_few_shot(pred: Prediction, mode: str) -> Prediction:
    """Category-level image scores of a few-shot prediction; zero-shot predictions pass unchanged."""
    if MAP_MAX not in pred.extras:
        return pred
    scores = few_shot_image_scores(pred.extras[TEXT_SCORE], pred.extras[MAP_MAX], mode)
    return Prediction(scores=scores, maps=pred.maps, extras=pred.extras)
