"""The one face every method has (DESIGN.md, "One face for every method").

A method is an ``nn.Module`` so that ``.to(device)``, ``.eval()`` and state dicts come for free.
The runner (:mod:`sowa_lib.evaluate`) drives every method the same way::

    method.fit(aux_samples)                 # trains heads/adapters/decoder; no-op when training-free
    method.set_references(ref_images, cls)  # K normal images, preprocessed like the queries; K = 0 allowed
    pred = method.predict(images, cls)      # one batch of normalised images [N, 3, S, S]
    pred = method.finalize_category(pred)   # category-level (transductive) step, identity by default

``predict``, ``set_references`` and ``finalize_category`` always run in eval mode, whatever mode the
module is in, and leave every submodule's mode as the caller had it (:func:`in_eval_mode`, applied to
every subclass): a method built by ``methods.build`` and called straight away is deterministic.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

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


#: The methods of the face that run in eval mode (DESIGN.md: "predict is deterministic whatever mode
#: the module is in"). A method that trains inside one of them (AGPNet few-shot trains its decoder in
#: ``set_references``) switches the part it trains to train mode itself.
EVAL_MODE_METHODS = ("predict", "set_references", "finalize_category")


def in_eval_mode(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function(self, ...)`` run with ``self`` and all its submodules in eval mode; each submodule's
    mode is restored afterwards (also when ``function`` raises)."""
    @functools.wraps(function)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        modes = [(module, module.training) for module in self.modules()]
        if not any(training for _, training in modes):
            return function(self, *args, **kwargs)
        self.eval()
        try:
            return function(self, *args, **kwargs)
        finally:
            for module, training in modes:
                module.training = training

    wrapper.__eval_mode__ = True
    return wrapper


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
    """

    name: ClassVar[str] = ""
    normalization: ClassVar[str] = "clip"
    training_data: ClassVar[str] = "none"
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}

    image_size: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the :data:`EVAL_MODE_METHODS` a subclass defines with :func:`in_eval_mode`."""
        super().__init_subclass__(**kwargs)
        for name in EVAL_MODE_METHODS:
            function = vars(cls).get(name)
            if function is not None and not getattr(function, "__eval_mode__", False):
                setattr(cls, name, in_eval_mode(function))

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
        return plain_options(self.config())

    @property
    def device(self) -> torch.device:
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")


def plain_options(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every value that is not a JSON scalar, list or tuple replaced by its ``repr``."""
    plain = (int, float, str, bool, type(None), list, tuple)
    return {k: v if isinstance(v, plain) else repr(v) for k, v in config.items()}


def check_choice(option: str, value: Any, choices: Sequence[Any]) -> None:
    """Reject an unknown value of a fidelity switch with the allowed ones in the message."""
    if value not in choices:
        raise ValueError(f"{option}={value!r}; choose one of {tuple(choices)}")
