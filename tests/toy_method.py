"""A tiny, fast method of the common face, for runner and executor tests (built as
``"toy_method:MeanDistance"``). Not part of the study."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from sowa_lib.methods.base import AnomalyMethod, Prediction, RunContext
from sowa_lib.training import EpochCheckpoints


class MeanDistance(AnomalyMethod):
    """Map: per-pixel distance from the mean reference image (zero-shot: from the image's mean colour).

    ``fail_marker``: when set and that file does not exist yet, the first ``predict`` creates it and
    raises — a transient failure for the retry tests. ``always_fail_on``: a category that always fails.
    ``expect_environment``: variables the process running ``predict`` must have (worker tests).
    """

    name = "toy"
    normalization = "imagenet"

    def __init__(self, image_size: int = 32, fail_marker: str | None = None, always_fail_on: str | None = None,
                 expect_environment: dict[str, str] | None = None) -> None:
        super().__init__()
        self.image_size = image_size
        self.fail_marker = fail_marker
        self.always_fail_on = always_fail_on
        self.expect_environment = expect_environment or {}
        self.register_buffer("reference", torch.zeros(0))

    @property
    def weights_id(self) -> str:
        return "toy:none"  # no backbone, no weights

    def set_references(self, images: torch.Tensor, category: str, context: RunContext | None = None) -> None:
        self.reference = images.mean(0) if len(images) else torch.zeros(0)

    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        if category == self.always_fail_on:
            raise RuntimeError(f"toy failure on {category}")
        found = {name: os.environ.get(name) for name in self.expect_environment}
        if found != self.expect_environment:
            raise RuntimeError(f"worker environment {found}, expected {self.expect_environment}")
        if self.fail_marker and not Path(self.fail_marker).exists():
            Path(self.fail_marker).touch()
            raise RuntimeError("transient toy failure")
        centre = self.reference if self.reference.numel() else images.mean(dim=(2, 3), keepdim=True)
        maps = (images - centre).norm(dim=1)
        return Prediction(maps.amax(dim=(1, 2)), maps)


class KilledMidway(MeanDistance):
    """Kills its own worker process on one category, as a pre-empted or OOM-killed job would die:
    in ``predict`` (``kill_at="predict"``) or inside ``runs.write_run`` once the run's temporary file
    is complete, just before its atomic rename (``kill_at="write"``). Only for worker processes.
    ``disarmed_by``: a file whose existence stops the killing, so that a rerun of the same
    configuration (same fingerprint) completes."""

    def __init__(self, kill_on: str = "", kill_at: str = "predict", disarmed_by: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.kill_on, self.kill_at = kill_on, kill_at
        self.disarmed_by = disarmed_by

    def predict(self, images: torch.Tensor, category: str) -> Prediction:
        if self.disarmed_by and Path(self.disarmed_by).exists():
            return super().predict(images, category)
        if category == self.kill_on and self.kill_at == "predict":
            os._exit(9)
        if category == self.kill_on and self.kill_at == "write":
            os.replace = _die_with_temporary_file  # this worker's process dies at its next rename
        return super().predict(images, category)


def _die_with_temporary_file(source: str, target: str) -> None:
    if not Path(source).is_file():
        raise AssertionError(f"the temporary file {source} should exist when the rename starts")
    os._exit(9)


class TrainedMeanDistance(MeanDistance):
    """:class:`MeanDistance` with a (no-op) training on the target's normal images, one per category
    in the one-class setting; the training on ``fail_training_on`` always fails. The log records the
    seed the runner gave (``RunContext.seed``)."""

    training_data = "target"
    inference_options = frozenset({"expect_environment"})

    def __init__(self, fail_training_on: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_training_on = fail_training_on

    def fit(self, samples, context: RunContext = RunContext()) -> dict:
        """Writes one epoch snapshot into ``context.checkpoint_dir``, as the real trainings do; the log names it."""
        if samples[0].category == self.fail_training_on:
            raise RuntimeError(f"toy training failure on {self.fail_training_on}")
        checkpoint_dir = context.checkpoint_dir
        if checkpoint_dir is None:
            return {"seed": context.seed}
        weight = torch.zeros(1, requires_grad=True)
        EpochCheckpoints(checkpoint_dir).save(1, {"weight": weight.detach()}, torch.optim.SGD([weight], lr=0.1), [0.0])
        return {"seed": context.seed, "snapshots": sorted(str(p) for p in Path(checkpoint_dir).iterdir())}
