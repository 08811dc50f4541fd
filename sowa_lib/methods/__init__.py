"""Method registry: ``build(name, profile=..., **overrides)`` (timm-style, one factory), and the
method options each profile gives (:func:`method_profile_options`).

Modules are imported lazily so that building one method never imports the others' heavy
dependencies.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Iterable

from sowa_lib.methods.base import AnomalyMethod, Prediction

_REGISTRY: dict[str, str] = {
    "winclip": "sowa_lib.methods.winclip:WinCLIP",
    "april_gan": "sowa_lib.methods.april_gan:AprilGAN",
    "sowa": "sowa_lib.methods.sowa:SOWA",
    "agpnet": "sowa_lib.methods.agpnet:AGPNet",
    "spade": "sowa_lib.methods.spade:SPADE",
    "padim": "sowa_lib.methods.padim:PaDiM",
    "patchcore": "sowa_lib.methods.patchcore:PatchCore",
}


#: The method options of the smoke profile, on top of each method's paper options, for the methods
#: whose constructor has them (:func:`method_profile_options`); part of
#: :data:`sowa_lib.profiles.SMOKE_DIFFERENCES`, which lists the study-level differences.
SMOKE_METHOD_OPTIONS: dict[str, Any] = {
    "pretrained": None,  # random weights of the real architectures (open_clip, timm, torchvision)
    "epochs": 1,  # April-GAN's 3/15 and AGPNet's 500 epochs; SOWA's is 1 already
    "few_shot_epochs": 1,  # AGPNet few-shot (its paper folds: 32 views of each reference, K batches of 32)
    "max_steps_per_epoch": 1,  # AGPNet: one batch of each epoch (SOWA's and April-GAN's smoke epochs are one batch already)
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def method_class(name: str) -> type[AnomalyMethod]:
    """The class registered as ``name``, or named directly as ``"package.module:Class"`` (a
    researcher's own method, which the runner and executors then treat like the built-in ones)."""
    if name not in _REGISTRY and ":" not in name:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(available())} (or 'module:Class')")
    module_name, class_name = _REGISTRY.get(name, name).split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build(name: str, profile: str | None = None, **overrides: Any) -> AnomalyMethod:
    """Build method ``name`` with its ``profile`` defaults (``"demo"``/``"smoke"``/``"paper"``) and ``overrides``.

    ``profile=None`` and ``"paper"`` both give the reference-implementation defaults; ``"smoke"``
    gives the paper's with the declared differences of :data:`SMOKE_METHOD_OPTIONS`.
    """
    cls = method_class(name)
    method = cls(**{**profile_options(cls, profile), **overrides})
    method._config = configuration(name, profile, **overrides)
    return method


def profile_options(cls: type[AnomalyMethod], profile: str | None) -> dict[str, Any]:
    """The constructor options ``cls`` takes in ``profile`` (:func:`method_profile_options`)."""
    return method_profile_options(options_in_effect(cls, {}), cls.profiles, profile)


def method_profile_options(options: Iterable[str], method_profiles: dict[str, dict[str, Any]], profile: str | None) -> dict[str, Any]:
    """Constructor options of a method in ``profile``: its ``profiles`` entry (``paper``: none, the
    constructor defaults are the reference's), and for ``smoke`` the paper's plus those of
    :data:`SMOKE_METHOD_OPTIONS` that the constructor has (``options``: its option names)."""
    if profile == "smoke":
        known = set(options)
        return {**method_profiles.get("paper", {}), **{k: v for k, v in SMOKE_METHOD_OPTIONS.items() if k in known}}
    return dict(method_profiles.get(profile or "paper", {}))


def configuration(name: str, profile: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The configuration ``build(name, profile, **overrides)`` records (:meth:`AnomalyMethod.config`),
    computed without building the method (cheap even for ViT-L): method, profile and every
    constructor option in effect (:func:`options_in_effect`)."""
    cls = method_class(name)
    options = {**profile_options(cls, profile), **overrides}
    return {"method": name, "profile": profile or "paper", **options_in_effect(cls, options)}


def options_in_effect(cls: type[AnomalyMethod], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus the constructor defaults of every option not given, following ``**kwargs``
    into the parent constructors: the configuration a run records and a checkpoint is checked against,
    so that an option given at its default value and one left out compare equal."""
    resolved, remaining = {}, dict(options)
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        for p in parameters:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if p.name in remaining:
                resolved[p.name] = remaining.pop(p.name)
            elif p.default is not p.empty:
                resolved.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return {**resolved, **remaining}


__all__ = ["AnomalyMethod", "Prediction", "SMOKE_METHOD_OPTIONS", "available", "build", "configuration", "method_class",
           "method_profile_options", "options_in_effect"]
