"""The runner: dataset -> method -> prediction -> metrics -> results store.

``run_plan`` computes every missing run of one method configuration over datasets, categories,
shots and seeds, reusing what the store already holds (an interrupted sweep resumes), training or
loading the method's checkpoint once per training set, and giving every method the same K-shot
reference files for the same (dataset, category, K, seed).
"""
from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import torch

from sowa_lib import data, methods, runs
from sowa_lib.data.references import draw_references
from sowa_lib.data.sample import Sample
from sowa_lib.data.transforms import load_images, load_masks
from sowa_lib.methods.base import AnomalyMethod, Prediction
from sowa_lib.profiles import Profile
from sowa_lib.training import atomic_torch_save


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


class _SampleCache:
    """Samples and preprocessed tensors, loaded once per sweep."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._samples: dict[tuple[str, str, str], list[Sample]] = {}
        self._tensors: dict[tuple, torch.Tensor] = {}

    def samples(self, dataset: str, category: str | None, split: str) -> list[Sample]:
        key = (dataset, category or "*", split)
        if key not in self._samples:
            ref = self.profile.datasets[dataset]
            self._samples[key] = data.load(ref.loader, ref.root, category, split)
        return self._samples[key]

    def images(self, dataset: str, category: str, size: int, normalization: str) -> torch.Tensor:
        key = ("img", dataset, category, size, normalization)
        if key not in self._tensors:
            self._tensors[key] = load_images(self.samples(dataset, category, "test"), size, normalization)
        return self._tensors[key]

    def masks(self, dataset: str, category: str, size: int) -> torch.Tensor:
        key = ("mask", dataset, category, size)
        if key not in self._tensors:
            self._tensors[key] = load_masks(self.samples(dataset, category, "test"), size)
        return self._tensors[key]


def checkpoint_path(profile: Profile, plan: Plan, training_set: str, seed: int) -> Path:
    """Trained weights of one (method, variant, training set, seed); shared by the zero- and
    few-shot runs of methods trained on an auxiliary dataset."""
    return profile.run_dir / "checkpoints" / plan.method / plan.variant / f"{training_set}_seed{seed}.pt"


def train_or_load(method: AnomalyMethod, samples: Sequence[Sample], ckpt: Path, progress: bool) -> dict[str, Any]:
    """Fit ``method`` on ``samples`` unless ``ckpt`` holds its trained weights; save them after."""
    if ckpt.is_file():
        method.load_trainable_state_dict(torch.load(ckpt, map_location=method.device, weights_only=True))
        return {"loaded": str(ckpt)}
    log = method.fit(samples, checkpoint_dir=ckpt.with_suffix(".parts"), progress=progress)
    atomic_torch_save(method.trainable_state_dict(), ckpt)
    ckpt.with_suffix(".log.json").write_text(json.dumps(log, default=float))
    return log


def predict_category(method: AnomalyMethod, images: torch.Tensor, category: str, batch_size: int) -> Prediction:
    """Batched prediction over a category's test images, then the method's category-level step."""
    with torch.no_grad():
        parts = [method.predict(batch.to(method.device), category) for batch in images.split(batch_size)]
    return method.finalize_category(Prediction.concat(parts))


def score_category(pred: Prediction, labels: torch.Tensor, masks: torch.Tensor, aupro_variant: str = "mvtec") -> tuple[dict[str, float], dict[str, str]]:
    """The seven metrics of one category (values in [0, 1]) and the reasons for any NaN."""
    from sowa_lib import metrics

    if masks.shape[-2:] != pred.maps.shape[-2:]:
        raise ValueError(f"maps {tuple(pred.maps.shape)} and masks {tuple(masks.shape)} differ in size")
    result = metrics.category_metrics(pred.scores.numpy(), labels.numpy(), pred.maps.numpy(), masks.numpy(), aupro_variant=aupro_variant)
    return {k: float(v) for k, v in result.items()}, dict(result.reasons)


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
    few-shot mode trains inside ``set_references``.
    """
    if training_data == "none" or (training_data == "target" and plan.setting == "few_shot"):
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


def method_options(plan: Plan, training: tuple[str, str | None, int] | None) -> dict[str, Any]:
    """The plan's overrides, plus ``setting`` for methods whose constructor takes one (AGPNet:
    multi-class / one-class / few-shot) and the training seed for methods trained on the target."""
    cls = methods.method_class(plan.method)
    accepted = inspect.signature(cls.__init__).parameters
    options = dict(plan.overrides)
    if "setting" in accepted:
        options.setdefault("setting", plan.setting)
    if training is not None and cls.training_data == "target" and "seed" in accepted:
        options["seed"] = training[2]
    return options


def _build_trained(job: Job, cache: "_SampleCache", progress: bool) -> tuple[AnomalyMethod, dict[str, Any]]:
    """Build the job's method and train it, or load the checkpoint an earlier job wrote."""
    overrides = method_options(job.plan, job.training)
    method = methods.build(job.plan.method, profile=job.profile.name, **overrides).to(job.profile.device)
    log: dict[str, Any] = {}
    if job.training is not None:
        train_set, category, seed = job.training
        split = "test" if method.training_data == "auxiliary" else "train"
        name = train_set if category is None else f"{train_set}-{category}"
        log = train_or_load(method.train(), cache.samples(train_set, category, split), checkpoint_path(job.profile, job.plan, name, seed), progress)
    return method.eval(), log


def execute_job(job: Job, progress: bool = False) -> list[str]:
    """Run one job in this process; returns the result files it wrote (none for a training job)."""
    cache = _SampleCache(job.profile)
    method, log = _build_trained(job, cache, progress)
    written = []
    for spec in job.specs:
        if not runs.is_done(job.profile.run_dir, spec):
            written.append(str(_run_one(method, job, spec, cache, log)))
    return written


def run_plan(plan: Plan, profile: Profile, *, executor: Any = None, progress: bool = True, aupro_variant: str = "mvtec") -> pd.DataFrame:
    """Compute the missing runs of ``plan`` (through ``executor``, local by default) and return all
    of its runs from the store.

    A failed training does not stop the sweep: every evaluation whose training exists still runs,
    then one :class:`~sowa_lib.executors.SweepError` lists what failed and what it kept from running.
    """
    from sowa_lib.executors import LocalExecutor, sweep_error
    from sowa_lib.profiles import prepare

    categories = prepare(profile, list(plan.datasets))
    specs = expand(plan, profile, categories)
    runs.remove_orphaned_temporaries(profile.run_dir)
    done = {s for s in specs if runs.is_done(profile.run_dir, s)}
    refuse_other_aupro_variant(sorted(done, key=str), profile, aupro_variant)
    todo = [s for s in specs if s not in done]
    if todo and methods.method_class(plan.method).training_data == "auxiliary":
        prepare(profile, sorted({profile.auxiliary[d] for d in plan.datasets}))
    if todo:
        executor = executor or LocalExecutor(progress=progress)
        train_jobs, eval_jobs = make_jobs(plan, profile, todo, aupro_variant)
        failures = executor.attempt(train_jobs, f"train {plan.method}/{plan.variant}")
        failed_trainings = {outcome.job.training for outcome in failures}
        runnable = [job for job in eval_jobs if job.training not in failed_trainings]
        failures += executor.attempt(runnable, f"{plan.method}/{plan.variant}/{plan.setting}")
        if failures:
            raise sweep_error(failures, executor.retries, skipped=[job for job in eval_jobs if job.training in failed_trainings])
    return runs.load_results(profile.run_dir, specs)


def refuse_other_aupro_variant(done: Sequence[runs.RunSpec], profile: Profile, aupro_variant: str) -> None:
    """The AUPRO definition is not part of a run's key: stop before reusing runs scored with another."""
    stored = {spec: runs.read_run(runs.run_path(profile.run_dir, spec)).get("aupro_variant") for spec in done}
    other = [spec for spec, variant in stored.items() if variant != aupro_variant]
    if other:
        first = other[0]
        raise ValueError(
            f"{len(other)} stored run(s) of {first.method}/{first.variant} were scored with aupro_variant="
            f"{stored[first]!r}, not {aupro_variant!r} (e.g. {runs.run_path(profile.run_dir, first)}). Give this "
            "scoring its own Plan(variant=...) name (as sowa_lib.ablations does), or another results_dir."
        )


def references(method: AnomalyMethod, cache: _SampleCache, dataset: str, category: str, shots: int, seed: int) -> list[Sample]:
    """The K-shot reference samples of one run: the shared draw, or with replacement for methods whose
    reference implementation samples that way (``reference_replacement``, April-GAN)."""
    replacement = bool(getattr(method, "reference_replacement", False))
    return draw_references(cache.samples(dataset, category, "train"), shots, seed, replacement=replacement)


def reference_options(method: AnomalyMethod, plan: Plan, profile: Profile, spec: runs.RunSpec) -> dict[str, Any]:
    """Keyword arguments of ``set_references`` for methods that train on the references (AGPNet
    few-shot): a checkpoint folder per (dataset, category, K, seed), so that training resumes."""
    if "checkpoint_dir" not in inspect.signature(method.set_references).parameters or spec.shots == 0:
        return {}
    name = f"{spec.dataset}-{spec.category}-k{spec.shots}"
    return {"checkpoint_dir": checkpoint_path(profile, plan, name, spec.seed).with_suffix(".parts")}


def _run_one(method: AnomalyMethod, job: Job, spec: runs.RunSpec, cache: _SampleCache, training_log: dict) -> Path:
    profile = job.profile
    size, norm = method.image_size, method.normalization
    test = cache.samples(spec.dataset, spec.category, "test")
    refs = references(method, cache, spec.dataset, spec.category, spec.shots, spec.seed)
    start = time.perf_counter()
    method.set_references(load_images(refs, size, norm).to(method.device), spec.category, **reference_options(method, job.plan, profile, spec))
    pred = predict_category(method, cache.images(spec.dataset, spec.category, size, norm), spec.category, profile.batch_size)
    seconds = time.perf_counter() - start
    labels = torch.tensor([s.label for s in test])
    values, reasons = score_category(pred, labels, cache.masks(spec.dataset, spec.category, pred.maps.shape[-1]), job.aupro_variant)
    config = method.plain_config()
    return runs.write_run(
        profile.run_dir, spec, values,
        reasons=reasons,
        references=[r.relpath for r in refs],
        config=config,
        provenance=runs.provenance(weights=str(config.get("pretrained", "")), device=str(profile.device)),
        seconds=seconds,
        n_test=len(test),
        training={k: v for k, v in training_log.items() if not isinstance(v, list)},
        aupro_variant=job.aupro_variant,
    )


def predictions(plan: Plan, profile: Profile, dataset: str, category: str, shots: int = 0, seed: int = 0) -> tuple[AnomalyMethod, list[Sample], Prediction, torch.Tensor]:
    """The method of ``plan`` (trained, or loaded from the checkpoint its sweep wrote), the test
    samples of one category, its prediction with the run's K-shot references, and the masks at the
    prediction's resolution. For figures, which need the maps that the store does not keep."""
    return next(category_predictions(plan, profile, dataset, [category], shots, seed))


def category_predictions(plan: Plan, profile: Profile, dataset: str, categories: Sequence[str], shots: int = 0,
                         seed: int = 0) -> Iterator[tuple[AnomalyMethod, list[Sample], Prediction, torch.Tensor]]:
    """:func:`predictions` for each of ``categories`` in turn, building (or loading) the method once
    per training set rather than once per category."""
    cache = _SampleCache(profile)
    built: dict[Any, AnomalyMethod] = {}
    for category in categories:
        spec = runs.RunSpec(profile.name, dataset, category, plan.method, plan.setting, shots, seed, plan.variant)
        training = training_key(plan, methods.method_class(plan.method).training_data, profile, spec)
        if training not in built:
            built[training] = _build_trained(Job(plan, profile, training), cache, progress=False)[0]
        method = built[training]
        refs = references(method, cache, dataset, category, shots, seed)
        method.set_references(load_images(refs, method.image_size, method.normalization).to(method.device), category,
                              **reference_options(method, plan, profile, spec))
        pred = predict_category(method, cache.images(dataset, category, method.image_size, method.normalization), category, profile.batch_size)
        yield method, cache.samples(dataset, category, "test"), pred, cache.masks(dataset, category, pred.maps.shape[-1])
