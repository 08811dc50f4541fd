"""The one face every method has (DESIGN.md, "One face for every method").

A method is an ``nn.Module`` so that ``.to(device)``, ``.eval()`` and state dicts come for free.
The runner (:mod:`sowa_lib.evaluate`) drives every method the same way::

    method.fit(aux_samples)                 # trains heads/adapters/decoder; no-op when training-free
    method.set_references(ref_images, cls)  # K normal images, preprocessed like the queries; K = 0 allowed
    pred = method.predict(images, cls)      # one batch of normalised images [N, 3, S, S]
    pred = method.finalize_category(pred)   # category-level (transductive) step, identity by default
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from sowa_lib.data.sample import Sample


@dataclass
class Prediction:
    """Image scores ``[N]`` and anomaly maps ``[N, H, W]`` (float32, CPU) at the method's resolution."""

    scores: torch.Tensor
    maps: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scores.ndim != 1 or self.maps.ndim != 3 or len(self.scores) != len(self.maps):
            raise ValueError(f"Prediction wants scores [N] and maps [N,H,W]; got {tuple(self.scores.shape)} and {tuple(self.maps.shape)}")

    @staticmethod
    def concat(parts: Sequence["Prediction"]) -> "Prediction":
        keys = parts[0].extras.keys() if parts else ()
        return Prediction(
            scores=torch.cat([p.scores for p in parts]),
            maps=torch.cat([p.maps for p in parts]),
            extras={k: torch.cat([p.extras[k] for p in parts]) for k in keys},
        )


class AnomalyMethod(nn.Module):
    """Base class: subclasses set the class attributes and implement :meth:`predict`.

    Class attributes
    ----------------
    name: registry name (``build(name)``).
    normalization: ``"clip"`` or ``"imagenet"`` mean/std expected by :meth:`predict`.
    training_data: what :meth:`fit` trains on — ``"none"`` (training-free), ``"auxiliary"`` (the
        *test* split, with masks, of the auxiliary dataset: April-GAN, SOWA) or ``"target"`` (normal
        train images of the target dataset: AGPNet multi-/one-class).
    profiles: per-profile constructor overrides, e.g. ``{"demo": {"backbone": "tiny-clip"}}``;
        :func:`sowa_lib.methods.build` applies them before the caller's own overrides.
    trains_on_references: :meth:`set_references` trains (AGPNet few-shot) instead of only encoding
        the references with the frozen backbone; the runner then neither caches its encodings nor
        encodes the references one image at a time (:mod:`sowa_lib.features`).
    """

    name: ClassVar[str] = ""
    normalization: ClassVar[str] = "clip"
    training_data: ClassVar[str] = "none"
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    trains_on_references: ClassVar[bool] = False

    image_size: int

    def fit(
        self, samples: Sequence[Sample], *, checkpoint_dir: Path | None = None, progress: bool = True
    ) -> dict[str, Any]:
        """Train on ``samples`` (see ``training_data``); returns a log such as ``{"loss": [...]}``.

        Methods that train for long save their learned weights under ``checkpoint_dir`` and resume
        from the last checkpoint there after an interruption.
        """
        return {}

    def set_references(self, images: torch.Tensor, category: str) -> None:
        """Store the K normal reference images of ``category`` ([K,3,S,S]; K may be 0)."""
        if len(images):
            raise NotImplementedError(f"{self.name} has no few-shot mode")

    def predict(self, images: torch.Tensor, category: str) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError

    def finalize_category(self, pred: Prediction) -> Prediction:
        """Category-level post-processing over all test images of a category (identity by default)."""
        return pred

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The learned weights only (what a checkpoint holds); frozen backbones are left out."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in trainable}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"{self.name}: checkpoint keys differ (missing {missing[:5]}, unexpected {extra[:5]})")
        self.load_state_dict(state, strict=False)

    def config(self) -> dict[str, Any]:
        """Constructor options that define this variant (recorded with every run)."""
        return dict(getattr(self, "_config", {}))

    def plain_config(self) -> dict[str, Any]:
        """:meth:`config` as JSON and weights-only checkpoints can hold it: objects passed as options
        (a built backbone, a model in memory) by their ``repr``."""
        plain = (int, float, str, bool, type(None), list, tuple)
        return {k: v if isinstance(v, plain) else repr(v) for k, v in self.config().items()}

    @property
    def device(self) -> torch.device:
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")


def check_choice(option: str, value: Any, choices: Sequence[Any]) -> None:
    """Reject an unknown value of a fidelity switch with the allowed ones in the message."""
    if value not in choices:
        raise ValueError(f"{option}={value!r}; choose one of {tuple(choices)}")
