"""A tiny, fast method of the common face, for runner and executor tests (built as
``"toy_method:MeanDistance"``). Not part of the study."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from sowa_lib.methods.base import AnomalyMethod, Prediction


class MeanDistance(AnomalyMethod):
    """Map: per-pixel distance from the mean reference image (zero-shot: from the image's mean colour).

    ``fail_marker``: when set and that file does not exist yet, the first ``predict`` creates it and
    raises — a transient failure for the retry tests. ``always_fail_on``: a category that always fails.
    """

    name = "toy"
    normalization = "imagenet"

    def __init__(self, image_size: int = 32, fail_marker: str | None = None, always_fail_on: str | None = None) -> None:
        super().__init__()
        self.image_size = image_size
        self.fail_marker = fail_marker
        self.always_fail_on = always_fail_on
        self.register_buffer("reference", torch.zeros(0))

    def set_references(self, images: torch.Tensor, category: str) -> None:
        self.reference = images.mean(0) if len(images) else torch.zeros(0)

    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        if category == self.always_fail_on:
            raise RuntimeError(f"toy failure on {category}")
        if self.fail_marker and not Path(self.fail_marker).exists():
            Path(self.fail_marker).touch()
            raise RuntimeError("transient toy failure")
        centre = self.reference if self.reference.numel() else images.mean(dim=(2, 3), keepdim=True)
        maps = (images - centre).norm(dim=1)
        return Prediction(maps.amax(dim=(1, 2)), maps)


class KilledMidway(MeanDistance):
    """Kills its own worker process on one category, as a pre-empted or OOM-killed job would die."""

    def __init__(self, kill_on: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.kill_on = kill_on

    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        if category == self.kill_on:
            os._exit(9)
        return super().predict(images, category)
