"""The runner's plan of work, without running any of it: a :class:`Plan` (one method configuration
over datasets × categories × shots × seeds), the runs it expands to, the trainings they share, and
the :class:`Job` units that an executor (:mod:`sowa_lib.executors`) dispatches and the runner
(:func:`sowa_lib.evaluate.execute_job`) runs. Both import this module; neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sowa_lib import methods, runs
from sowa_lib.profiles import Profile


@dataclass(frozen=True)
class Plan:
    """One method configuration swept over datasets × categories × shots × seeds.

    ``setting`` is ``zero_shot`` (shots must be 0), ``few_shot``, ``multi_class`` or ``one_class``.
    ``variant`` names a non-default configuration given by ``overrides`` (ablations, fidelity
    switches); ``"default"`` is the method's reference-implementation configuration.
    """

    method: str
    setting: str
    datasets: tuple[str, ...]
    shots: tuple[int, ...] = (0,)
    seeds: tuple[int, ...] = (0,)
    variant: str = "default"
    overrides: dict[str, Any] = field(default_factory=dict)
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.setting == "zero_shot" and set(self.shots) != {0}:
            raise ValueError("zero_shot runs use shots=(0,)")
        if self.variant == "default" and self.overrides:
            raise ValueError("give a variant name to runs with overrides")


def expand(plan: Plan, profile: Profile, categories: dict[str, list[str]]) -> list[runs.RunSpec]:
    """Every run of ``plan``; zero-shot and unsupervised runs without references use seed 0 only
    unless the method trains (then each seed is a separate training)."""
    specs = []
    for dataset in plan.datasets:
        for category in plan.categories or categories[dataset]:
            for shots in plan.shots:
                seeds = plan.seeds if shots > 0 or plan.setting in ("multi_class", "one_class") else (0,)
                for seed in seeds:
                    specs.append(runs.RunSpec(profile.name, dataset, category, plan.method, plan.setting, shots, seed, plan.variant))
    return specs


def training_plan(plan: Plan) -> Plan:
    """The plan whose training ``plan``'s runs use: the method's default when every override is one
    of its ``inference_options`` (an ablation of smoothing, image score or references trains
    nothing new), else ``plan`` itself."""
    if set(plan.overrides) <= methods.method_class(plan.method).inference_options:
        return replace(plan, variant="default", overrides={})
    return plan


def checkpoint_path(profile: Profile, plan: Plan, training_set: str, seed: int) -> Path:
    """Trained weights of one (method, variant, training set, seed); shared by the zero- and
    few-shot runs of methods trained on an auxiliary dataset. Give it :func:`training_plan`'s plan
    for a training, so that variants that differ in inference options only share one."""
    return profile.run_dir / "checkpoints" / plan.method / plan.variant / f"{training_set}_seed{seed}.pt"


@dataclass(frozen=True)
class Job:
    """A unit of work an executor dispatches: train one model (``specs`` empty) or evaluate the
    runs of one (dataset, category) that share a training. Picklable; idempotent."""

    plan: Plan
    profile: Profile
    training: tuple[str, str | None, int] | None
    specs: tuple[runs.RunSpec, ...] = ()
    aupro_variant: str = "mvtec"

    def describe(self) -> str:
        if not self.specs:
            return f"train {self.plan.method}/{self.plan.variant} on {self.training}"
        first = self.specs[0]
        return f"{self.plan.method}/{self.plan.variant} {first.dataset}/{first.category} ({len(self.specs)} runs)"


def training_key(plan: Plan, training_data: str, profile: Profile, spec: runs.RunSpec) -> tuple[str, str | None, int] | None:
    """(training set, category or None, seed) that ``spec``'s model is trained on; None if untrained.

    Methods trained on an auxiliary dataset are trained once with their own seed and shared by all
    targets with that auxiliary set, zero- and few-shot alike. AGPNet trains on the target's normal
    train images (once per dataset for multi-class, per category for one-class, per seed); its
    few-shot mode trains inside ``set_references``. A plan whose overrides give a ``checkpoint``
    evaluates those weights and trains nothing.
    """
    if training_data == "none" or (training_data == "target" and plan.setting == "few_shot"):
        return None
    if plan.overrides.get("checkpoint") is not None:  # trained weights given (e.g. the authors' released ones)
        return None
    if training_data == "auxiliary":
        return (profile.auxiliary[spec.dataset], None, 0)
    return (spec.dataset, spec.category if plan.setting == "one_class" else None, spec.seed)


def make_jobs(plan: Plan, profile: Profile, todo: list[runs.RunSpec], aupro_variant: str = "mvtec") -> tuple[list[Job], list[Job]]:
    """Training jobs (one per distinct training) and evaluation jobs (one per training × category)."""
    training_data = methods.method_class(plan.method).training_data
    groups: dict[tuple, list[runs.RunSpec]] = {}
    for spec in todo:
        key = training_key(plan, training_data, profile, spec)
        groups.setdefault((key, spec.dataset, spec.category), []).append(spec)
    trainings = sorted({key for key, _, _ in groups if key is not None}, key=str)
    train_jobs = [Job(plan, profile, key, (), aupro_variant) for key in trainings]
    eval_jobs = [Job(plan, profile, key, tuple(specs), aupro_variant) for (key, _, _), specs in groups.items()]
    return train_jobs, eval_jobs
