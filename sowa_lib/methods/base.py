"""The one face every method has (DESIGN.md, "One face for every method").

A method is an ``nn.Module`` so that ``.to(device)``, ``.eval()`` and state dicts come for free.
The runner (:mod:`sowa_lib.evaluate`) drives every method the same way::

    method.fit(aux_samples, context)        # trains heads/adapters/decoder; no-op when training-free
    method.set_references(ref_images, cls, context)  # K normal images, preprocessed like the queries; K = 0 allowed
    method.clear_references(cls)            # back to zero-shot (K = 0)
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


@dataclass(frozen=True)
class RunContext:
    """What the runner tells a method about one training or one set of references, instead of the
    method's signature being read (DESIGN.md, "One face for every method").

    seed: the seed of this training (the runner's per-seed trainings of methods trained on the
        target, AGPNet); None: the method's own ``seed`` option (the reference implementation's).
    checkpoint_dir: folder for the epoch snapshots an interrupted training resumes from (None: none).
    progress: show a progress bar over the training.
    """

    seed: int | None = None
    checkpoint_dir: Path | None = None
    progress: bool = True


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
    interpolation: how the runner resizes images for :meth:`predict` and ``set_references``
        (:func:`~sowa_lib.data.transforms.load_images`): ``"bicubic"`` (default) or ``"bilinear"``.
    training_data: what :meth:`fit` trains on — ``"none"`` (training-free), ``"auxiliary"`` (the
        *test* split, with masks, of the auxiliary dataset: April-GAN, SOWA) or ``"target"`` (normal
        train images of the target dataset: AGPNet multi-/one-class).
    profiles: per-profile constructor overrides, e.g. ``{"demo": {"backbone": "tiny-clip"}}``;
        :func:`sowa_lib.methods.build` applies them before the caller's own overrides.
    cached: names of attributes holding tensors the method computes and keeps (reference memories,
        cached text features, fitted statistics): a tensor, a list/tuple/dict of tensors, a
        :class:`~sowa_lib.ops.MemoryBank` or None. ``.to()``, ``.double()``, ``.cuda()`` convert
        them as they convert buffers (DESIGN.md: "cached tensors follow ``.to()``").
    trains_on_references: :meth:`set_references` trains (AGPNet few-shot) instead of only encoding
        the references with the frozen backbone; the runner then neither caches its encodings nor
        encodes the references one image at a time (:mod:`sowa_lib.features`), and gives it a
        :class:`RunContext` with a checkpoint folder per (dataset, category, K, seed).
    configured_by_setting: the constructor takes the study ``setting`` (AGPNet: ``multi_class`` /
        ``one_class`` / ``few_shot``); the runner passes the plan's.
    inference_options: constructor options that :meth:`fit` never reads (map smoothing, image
        score, reference memory and draws): a variant that changes only these shares the default's
        training (:func:`sowa_lib.jobs.training_plan`). ``tests/test_shared_training.py`` trains
        with each one changed and checks that the trained weights are bit-identical.
    caches_training_encodings: :meth:`fit` encodes its batches with the frozen backbone under
        ``torch.no_grad`` and the batches repeat between trainings of the same data and seed
        (SOWA: one epoch): the runner then lets those encodings go through the disk feature cache,
        so an ablation variant that changes only what comes after the backbone reuses them. False
        where they would not repeat or would not fit (April-GAN's reshuffled epochs at 518 px,
        AGPNet's noisy images).

    The runner reads these declarations, and :meth:`draws_references_with_replacement`,
    :meth:`frozen_forward` and :attr:`weights_id`, never a method's signature.
    """

    name: ClassVar[str] = ""
    normalization: ClassVar[str] = "clip"
    interpolation: str = "bicubic"
    training_data: ClassVar[str] = "none"
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    cached: ClassVar[tuple[str, ...]] = ()
    trains_on_references: ClassVar[bool] = False
    configured_by_setting: ClassVar[bool] = False
    inference_options: ClassVar[frozenset[str]] = frozenset()
    caches_training_encodings: ClassVar[bool] = False

    image_size: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the :data:`EVAL_MODE_METHODS` a subclass defines with :func:`in_eval_mode`."""
        super().__init_subclass__(**kwargs)
        for name in EVAL_MODE_METHODS:
            function = vars(cls).get(name)
            if function is not None and not getattr(function, "__eval_mode__", False):
                setattr(cls, name, in_eval_mode(function))
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "AnomalyMethod":
        """``nn.Module._apply`` (behind ``.to``/``.double``/``.cuda``), also applied to :attr:`cached`."""
        super()._apply(fn, recurse)
        for name in self.cached:
            if name in self.__dict__:  # not yet set while the constructor runs
                setattr(self, name, _map_tensors(fn, self.__dict__[name]))
        return self

    def fit(self, samples: Sequence[Sample], context: RunContext = RunContext()) -> dict[str, Any]:
        """Train on ``samples`` (see ``training_data``); returns a log such as ``{"loss": [...]}``.

        Methods that train for long save their learned weights under ``context.checkpoint_dir`` and
        resume from the last checkpoint there after an interruption.
        """
        return {}

    def set_references(self, images: torch.Tensor, category: str, context: RunContext | None = None) -> None:
        """Store the K normal reference images of ``category`` ([K,3,S,S]; K may be 0). ``context``
        matters only to methods that train on them (``trains_on_references``)."""
        if len(images):
            raise NotImplementedError(f"{self.name} has no few-shot mode")

    def clear_references(self, category: str) -> None:
        """Forget the references: zero-shot from now on (``set_references`` with an empty batch)."""
        size = self.image_size
        self.set_references(torch.empty(0, 3, size, size, dtype=self.dtype, device=self.device), category)

    @classmethod
    def draws_references_with_replacement(cls, config: dict[str, Any]) -> bool:
        """The reference sampling law of configuration ``config`` (:meth:`config`): False, the draw
        shared by every method (without replacement); April-GAN's reference code samples with it."""
        return False

    def frozen_forward(self, images: torch.Tensor) -> Any:
        """One plain forward of the frozen backbone at the method's resolution: what
        :mod:`sowa_lib.speed` times a ``predict`` against."""
        raise NotImplementedError(f"{type(self).__name__} declares no frozen backbone forward")

    @property
    def weights_id(self) -> str:
        """What identifies the frozen backbone's weights (architecture and pretrained tag, or a
        checkpoint's hash, or ``random``), recorded with every run."""
        raise NotImplementedError(f"{type(self).__name__} declares no weights_id")

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

    def training_config(self) -> dict[str, Any]:
        """:meth:`plain_config` less the :attr:`inference_options`: what a training's snapshots must match."""
        return {k: v for k, v in self.plain_config().items() if k not in self.inference_options}

    @property
    def device(self) -> torch.device:
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the weights (float32 unless converted, e.g. by ``.double()``)."""
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.get_default_dtype()


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """``fn`` applied to every tensor in ``value`` (a tensor, list, tuple, dict, or an object with
    tensor-list ``banks`` such as :class:`~sowa_lib.ops.MemoryBank`, converted in place)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(fn, v) for k, v in value.items()}
    if hasattr(value, "banks"):
        value.banks = _map_tensors(fn, value.banks)
    return value


def plain_options(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every value that is not a JSON scalar, list or tuple replaced by its ``repr``."""
    plain = (int, float, str, bool, type(None), list, tuple)
    return {k: v if isinstance(v, plain) else repr(v) for k, v in config.items()}


def check_choice(option: str, value: Any, choices: Sequence[Any]) -> None:
    """Reject an unknown value of a fidelity switch with the allowed ones in the message."""
    if value not in choices:
        raise ValueError(f"{option}={value!r}; choose one of {tuple(choices)}")
