"""The runner: dataset -> method -> prediction -> metrics -> results store.

``run_plan`` computes every missing run of one method configuration over datasets, categories,
shots and seeds, reusing what the store already holds (an interrupted sweep resumes), training or
loading the method's checkpoint once per training set, and giving every method the same K-shot
reference files for the same (dataset, category, K, seed).

Reuse is keyed by content (:mod:`sowa_lib.fingerprint`): a stored run or checkpoint counts only when
its fingerprint equals the one the plan would compute now (:func:`run_parts`, :func:`training_parts`,
derived without building the method); otherwise it is moved aside and recomputed, unless
``reuse_stale`` keeps stale runs (marked, and said so in the tables).

The plan and its jobs are :mod:`sowa_lib.jobs`; an executor (:mod:`sowa_lib.executors`) runs the
jobs through :func:`execute_job`, which the runner hands it; the datasets and weights are checked
first by :mod:`sowa_lib.preflight`.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, ContextManager, Iterator, Sequence

import pandas as pd
import torch

from sowa_lib import data, features, fingerprint, methods, metrics, runs, speed
from sowa_lib.data import demo
from sowa_lib.data.references import draw_references
from sowa_lib.data.sample import Sample
from sowa_lib.data.transforms import load_images, load_masks
from sowa_lib.errors import StaleCheckpointError
from sowa_lib.executors import Executor, LocalExecutor, sweep_error
from sowa_lib.jobs import Job, Plan, checkpoint_path, expand, make_jobs, training_key, training_plan
from sowa_lib.methods.base import AnomalyMethod, Prediction, RunContext, plain_options
from sowa_lib.preflight import prepare
from sowa_lib.profiles import Profile, auxiliary_training_options
from sowa_lib.training import claim_snapshot_dir, load_checkpoint, save_checkpoint
from sowa_lib.vocabulary import DEMO_DATASET


class _SampleCache:
    """Samples and preprocessed tensors, loaded once per sweep."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._samples: dict[tuple[str, str, str], list[Sample]] = {}
        self._tensors: dict[tuple, torch.Tensor] = {}
        self._identities: dict[tuple, str] = {}

    def samples(self, dataset: str, category: str | None, split: str) -> list[Sample]:
        key = (dataset, category or "*", split)
        if key not in self._samples:
            ref = self.profile.datasets[dataset]
            self._samples[key] = data.load(ref.loader, ref.root, category, split)
        return self._samples[key]

    def images(self, dataset: str, category: str, size: int, normalization: str, interpolation: str = "bicubic") -> torch.Tensor:
        key = ("img", dataset, category, size, normalization, interpolation)
        if key not in self._tensors:
            self._tensors[key] = load_images(self.samples(dataset, category, "test"), size, normalization, interpolation)
        return self._tensors[key]

    def identity(self, dataset: str, category: str | None, split: str) -> str:
        """What identifies the files of one split: the demo manifest's content hash, else
        :func:`sowa_lib.fingerprint.files_identity` over its images and masks."""
        key = (dataset, category or "*", split)
        if key not in self._identities:
            ref = self.profile.datasets[dataset]
            manifest = demo.manifest_hash(ref.root) if ref.loader == DEMO_DATASET else None
            if manifest is not None:
                self._identities[key] = f"demo:{manifest}"
            else:
                samples = self.samples(dataset, category, split)
                files = [p for s in samples for p in (s.path, s.mask_path) if p is not None]
                self._identities[key] = fingerprint.files_identity(files, Path(ref.root))
        return self._identities[key]

    def masks(self, dataset: str, category: str, size: int) -> torch.Tensor:
        key = ("mask", dataset, category, size)
        if key not in self._tensors:
            self._tensors[key] = load_masks(self.samples(dataset, category, "test"), size)
        return self._tensors[key]


def train_or_load(method: AnomalyMethod, samples: Sequence[Sample], ckpt: Path, parts: dict[str, Any], seed: int | None,
                  progress: bool) -> dict[str, Any]:
    """Fit ``method`` on ``samples`` unless ``ckpt`` holds its trained weights saved with the same
    fingerprint ``parts`` (:func:`training_parts`); save them after. The fit gets a
    :class:`RunContext` with ``seed`` (None: the method's own), ``progress`` and the snapshot folder
    ``ckpt.parts/``: the epoch snapshots an interrupted fit resumes from, removed once ``ckpt`` is
    written (a completed training is only ever loaded). A checkpoint or a snapshot folder of another
    fingerprint is moved aside (``*.stale-<time>``) with a warning naming what differs."""
    snapshots = ckpt.with_suffix(".parts")
    if ckpt.is_file():
        try:
            method.load_trainable_state_dict(load_checkpoint(ckpt, parts, map_location=method.device))
            shutil.rmtree(snapshots, ignore_errors=True)
            return {"loaded": str(ckpt)}
        except StaleCheckpointError as err:
            warnings.warn(f"{err}: moved to {fingerprint.set_aside(ckpt).name}", stacklevel=2)
    claim_snapshot_dir(snapshots, parts)
    log = method.fit(samples, RunContext(seed=seed, checkpoint_dir=snapshots, progress=progress))
    save_checkpoint(ckpt, parts, method.trainable_state_dict())
    ckpt.with_suffix(".log.json").write_text(json.dumps(log, default=float))
    shutil.rmtree(snapshots, ignore_errors=True)
    return log


def category_feature_cache(profile: Profile, dataset: str, category: str) -> features.FeatureCache | None:
    """This process's feature cache (None when ``SOWA_FEATURE_CACHE=off``), scoped to one category:
    the encodings of the category before are dropped from memory."""
    cache = features.runner_cache(profile.run_dir)
    if cache is not None:
        cache.enter((dataset, category))
    return cache


def predict_with_references(
    method: AnomalyMethod, references: Sequence[Sample], images: torch.Tensor, category: str, batch_size: int,
    feature_cache: features.FeatureCache | None, context: RunContext | None = None,
) -> Prediction:
    """:func:`use_references` (with ``context``, :func:`reference_options`) then
    :func:`predict_category`, their frozen encodings through ``feature_cache`` (None: computed, not
    cached; the results are bit-identical either way). The references are encoded one image at a
    time, in both modes, unless the method trains on them."""
    if method.trains_on_references:
        use_references(method, references, category, context)
    else:
        with features.active(feature_cache, per_image=True):
            use_references(method, references, category, context)
    with features.active(feature_cache):
        return predict_category(method, images, category, batch_size)


def predict_category(method: AnomalyMethod, images: torch.Tensor, category: str, batch_size: int) -> Prediction:
    """Batched prediction over a category's test images, then the method's category-level step."""
    with torch.no_grad():
        parts = [method.predict(batch.to(method.device), category) for batch in images.split(batch_size)]
    return method.finalize_category(Prediction.concat(parts))


def score_category(pred: Prediction, labels: torch.Tensor, masks: torch.Tensor, aupro_variant: str = "mvtec") -> tuple[dict[str, float], dict[str, str]]:
    """The seven metrics of one category (values in [0, 1]) and the reasons for any NaN."""
    if masks.shape[-2:] != pred.maps.shape[-2:]:
        raise ValueError(f"maps {tuple(pred.maps.shape)} and masks {tuple(masks.shape)} differ in size")
    result = metrics.category_metrics(pred.scores.numpy(), labels.numpy(), pred.maps.numpy(), masks.numpy(), aupro_variant=aupro_variant)
    return {k: float(v) for k, v in result.items()}, dict(result.reasons)


def method_options(plan: Plan, profile: Profile, training: tuple[str, str | None, int] | None) -> dict[str, Any]:
    """The plan's overrides, plus the study ``setting`` for methods configured by it
    (``configured_by_setting``: AGPNet) and, for a method trained on an auxiliary dataset, the
    reference's training options for that set (:func:`sowa_lib.profiles.auxiliary_training_options`)
    that neither the plan nor the method's profile options set. The seed of a training on the target
    is not an option: :func:`_build_trained` gives it in the :class:`RunContext`."""
    cls = methods.method_class(plan.method)
    options = dict(plan.overrides)
    if cls.configured_by_setting:
        options.setdefault("setting", plan.setting)
    if training is not None and cls.training_data == "auxiliary":
        preset = methods.profile_options(cls, profile.name)
        schedule = auxiliary_training_options(profile.name, plan.method, training[0])
        options.update({k: v for k, v in schedule.items() if k not in options and k not in preset})
    return options


def planned_config(plan: Plan, profile: Profile, training: tuple[str, str | None, int] | None) -> dict[str, Any]:
    """The configuration (JSON-able) that the method of ``plan`` is built with for ``training``,
    derived without building it (:func:`sowa_lib.methods.configuration`)."""
    return plain_options(methods.configuration(plan.method, profile.name, **method_options(plan, profile, training)))


def _training_split(plan: Plan) -> str:
    return "test" if methods.method_class(plan.method).training_data == "auxiliary" else "train"


def training_parts(plan: Plan, profile: Profile, training: tuple[str, str | None, int], cache: "_SampleCache") -> dict[str, Any]:
    """The fingerprint parts of one trained model: configuration, training set identity, code version."""
    train_set, category, seed = training
    split = _training_split(plan)
    return {"config": planned_config(plan, profile, training), "code": fingerprint.code_version(),
            "training_set": {"dataset": train_set, "category": category, "split": split, "seed": seed,
                             "files": cache.identity(train_set, category, split)}}


def run_parts(plan: Plan, profile: Profile, spec: runs.RunSpec, aupro_variant: str, cache: "_SampleCache") -> dict[str, Any]:
    """The fingerprint parts of one run (:mod:`sowa_lib.fingerprint`): configuration, test data
    identity, reference files, the model's training parts, metric definitions, code version."""
    training = training_key(plan, methods.method_class(plan.method).training_data, profile, spec)
    return {
        "config": planned_config(plan, profile, training),
        "data": {"dataset": spec.dataset, "category": spec.category, "files": cache.identity(spec.dataset, spec.category, "test")},
        "references": [r.relpath for r in run_references(plan, profile, spec, cache)],
        "training": training_parts(training_plan(plan), profile, training, cache) if training is not None else None,
        "metrics": {"aupro_variant": aupro_variant, "version": fingerprint.METRICS_VERSION},
        "code": fingerprint.code_version(),
    }


def _build_trained(job: Job, cache: "_SampleCache", progress: bool) -> tuple[AnomalyMethod, dict[str, Any]]:
    """Build the job's method and train it, or load the checkpoint an earlier job wrote: its own
    plan's, or the default's when the plan changes inference options only (:func:`training_plan`)."""
    overrides = method_options(job.plan, job.profile, job.training)
    method = methods.build(job.plan.method, profile=job.profile.name, **overrides).to(job.profile.device)
    log: dict[str, Any] = {}
    if job.training is not None:
        train_set, category, seed = job.training
        name = train_set if category is None else f"{train_set}-{category}"
        shared = training_plan(job.plan)
        parts = training_parts(shared, job.profile, job.training, cache)
        with training_feature_cache(method, job.profile):
            log = train_or_load(method.train(), cache.samples(train_set, category, _training_split(job.plan)),
                                checkpoint_path(job.profile, shared, name, seed), parts,
                                seed if method.training_data == "target" else None, progress)
    return method.eval(), log


def training_feature_cache(method: AnomalyMethod, profile: Profile) -> ContextManager[Any]:
    """The context a training runs in: for a method that ``caches_training_encodings``, this
    process's feature cache on disk only (``SOWA_FEATURE_CACHE=disk``; a training set's encodings
    are too many to hold in memory), so that trainings on the same batches (every ablation variant
    that changes only what comes after the backbone) encode them once; otherwise nothing cached."""
    cache = features.runner_cache(profile.run_dir) if method.caches_training_encodings else None
    disk = cache.disk_only() if cache is not None else None
    return features.active(disk) if disk is not None else contextlib.nullcontext()


def execute_job(job: Job, progress: bool = False) -> list[str]:
    """Run one job in this process; returns the result files it wrote (none for a training job).

    The runs of an evaluation job (every K and seed of one category) share one frozen encoding of
    each test and reference image through this process's feature cache, which drops the previous
    category's encodings when this one starts (:mod:`sowa_lib.features`)."""
    cache = _SampleCache(job.profile)
    method, log = _build_trained(job, cache, progress)
    written = []
    if job.specs:
        category_feature_cache(job.profile, job.specs[0].dataset, job.specs[0].category)
    for spec in job.specs:
        if not runs.is_done(job.profile.run_dir, spec):
            written.append(str(_run_one(method, job, spec, cache, log)))
    return written


def run_plan(plan: Plan, profile: Profile, *, executor: Executor | None = None, progress: bool = True, aupro_variant: str = "mvtec",
             reuse_stale: bool | None = None) -> pd.DataFrame:
    """Compute the missing runs of ``plan`` (through ``executor``, local by default) and return all
    of its runs from the store.

    A stored run counts only when its fingerprint is the one the plan computes now
    (:func:`run_parts`); a stale one is moved aside and recomputed, or, with ``reuse_stale``
    (default: the ``SOWA_REUSE_STALE`` variable), kept and marked stale (the tables say so).
    A failed training does not stop the sweep: every evaluation whose training exists still runs,
    then one :class:`~sowa_lib.errors.SweepError` lists what failed and what it kept from running.
    """
    reuse_stale = fingerprint.reuse_stale_default() if reuse_stale is None else reuse_stale
    categories = prepare(profile, list(plan.datasets))
    specs = expand(plan, profile, categories)
    runs.remove_orphaned_temporaries(profile.run_dir)
    if methods.method_class(plan.method).training_data == "auxiliary":
        prepare(profile, sorted({profile.auxiliary[d] for d in plan.datasets}))
    cache = _SampleCache(profile)
    todo = [s for s in specs if not _reusable(s, run_parts(plan, profile, s, aupro_variant, cache), profile, reuse_stale)]
    if todo:
        executor = executor or LocalExecutor(progress=progress)
        train_jobs, eval_jobs = make_jobs(plan, profile, todo, aupro_variant)
        failures = executor.attempt(train_jobs, execute_job, f"train {plan.method}/{plan.variant}")
        failed_trainings = {outcome.job.training for outcome in failures}
        runnable = [job for job in eval_jobs if job.training not in failed_trainings]
        failures += executor.attempt(runnable, execute_job, f"{plan.method}/{plan.variant}/{plan.setting}")
        if failures:
            raise sweep_error(failures, executor.retries, skipped=[job for job in eval_jobs if job.training in failed_trainings])
    return runs.load_results(profile.run_dir, specs)


def _reusable(spec: runs.RunSpec, parts: dict[str, Any], profile: Profile, reuse_stale: bool) -> bool:
    """Whether ``spec``'s stored run can stand: computed from ``parts``, or stale and kept on request
    (then marked). A stale run not kept is moved aside."""
    if not runs.run_path(profile.run_dir, spec).is_file():
        return False
    differs = runs.stale_keys(profile.run_dir, spec, parts)
    if differs is not None and not reuse_stale:
        moved = runs.set_aside_stale(profile.run_dir, spec)
        warnings.warn(f"recomputing {spec.relpath()}: stored run is stale (differs: {', '.join(differs)}); "
                      f"old file kept as {moved.name}", stacklevel=3)
        return False
    runs.mark_stale(profile.run_dir, spec, differs)
    return True


def references(cache: _SampleCache, dataset: str, category: str, shots: int, seed: int, replacement: bool) -> list[Sample]:
    """The K-shot reference samples of one run: the shared draw, or with replacement for methods whose
    reference implementation samples that way (option ``reference_replacement``, April-GAN)."""
    return draw_references(cache.samples(dataset, category, "train"), shots, seed, replacement=replacement)


def reference_options(method: AnomalyMethod, plan: Plan, profile: Profile, spec: runs.RunSpec, parts: dict[str, Any]) -> RunContext | None:
    """The :class:`RunContext` of ``set_references`` for a method that trains on its K > 0 references
    (``trains_on_references``: AGPNet few-shot): a checkpoint folder per (dataset, category, K, seed),
    claimed for the run's configuration and reference files (``parts``), so that training resumes
    only from its own. None for every other method and for K = 0."""
    if not method.trains_on_references or spec.shots == 0:
        return None
    name = f"{spec.dataset}-{spec.category}-k{spec.shots}"
    directory = checkpoint_path(profile, plan, name, spec.seed).with_suffix(".parts")
    claim_snapshot_dir(directory, {k: parts[k] for k in ("config", "references", "code")})
    return RunContext(checkpoint_dir=directory, progress=False)


def run_references(plan: Plan, profile: Profile, spec: runs.RunSpec, cache: _SampleCache) -> list[Sample]:
    """:func:`references` of ``spec`` with the sampling law of ``plan``'s method configuration
    (:meth:`~sowa_lib.methods.base.AnomalyMethod.draws_references_with_replacement`)."""
    cls = methods.method_class(plan.method)
    config = planned_config(plan, profile, training_key(plan, cls.training_data, profile, spec))
    replacement = cls.draws_references_with_replacement(config)
    return references(cache, spec.dataset, spec.category, spec.shots, spec.seed, replacement)


def use_references(method: AnomalyMethod, refs: Sequence[Sample], category: str, context: RunContext | None = None) -> None:
    """``set_references`` with the K loaded references (and ``context``, given to methods that train
    on them), or ``clear_references`` for zero-shot (K = 0)."""
    if not refs:
        method.clear_references(category)
        return
    images = load_images(refs, method.image_size, method.normalization, method.interpolation).to(device=method.device, dtype=method.dtype)
    method.set_references(images, category, context)


def _run_one(method: AnomalyMethod, job: Job, spec: runs.RunSpec, cache: _SampleCache, training_log: dict) -> Path:
    profile = job.profile
    size, norm = method.image_size, method.normalization
    test = cache.samples(spec.dataset, spec.category, "test")
    refs = run_references(job.plan, profile, spec, cache)
    parts = run_parts(job.plan, profile, spec, job.aupro_variant, cache)
    start = time.perf_counter()
    pred = predict_with_references(method, refs, cache.images(spec.dataset, spec.category, size, norm, method.interpolation), spec.category,
                                   profile.batch_size, features.runner_cache(profile.run_dir),
                                   reference_options(method, job.plan, profile, spec, parts))
    seconds = time.perf_counter() - start
    labels = torch.tensor([s.label for s in test])
    values, reasons = score_category(pred, labels, cache.masks(spec.dataset, spec.category, pred.maps.shape[-1]), job.aupro_variant)
    config = method.plain_config()
    return runs.write_run(
        profile.run_dir, spec, values,
        reasons=reasons,
        references=[r.relpath for r in refs],
        config=config,
        provenance=runs.provenance(weights=method.weights_id, device=str(profile.device)),
        seconds=seconds,
        n_test=len(test),
        training={k: v for k, v in training_log.items() if not isinstance(v, list)},
        aupro_variant=job.aupro_variant,
        fingerprint_parts=parts,
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
        refs = run_references(plan, profile, spec, cache)
        parts = run_parts(plan, profile, spec, "mvtec", cache)
        pred = predict_with_references(method, refs, cache.images(dataset, category, method.image_size, method.normalization, method.interpolation),
                                       category, profile.batch_size, category_feature_cache(profile, dataset, category),
                                       reference_options(method, plan, profile, spec, parts))
        yield method, cache.samples(dataset, category, "test"), pred, cache.masks(dataset, category, pred.maps.shape[-1])


def speed_run(plan: Plan, profile: Profile, dataset: str, category: str, shots: int | None = None, *, n_images: int = 4,
              repeats: int = 3, reuse_stale: bool | None = None) -> pd.DataFrame:
    """Measure the speed of ``plan``'s method configuration and store it as a run like any other
    (setting ``efficiency``, with provenance: device, GPU, host), so that the papers' speed claims
    (SOWA fig9, AGPNet Table 9) have a producer; returns the stored run as :func:`runs.load_results` rows.

    Protocol: :func:`sowa_lib.speed.measure` on the first ``n_images`` test images of
    (``dataset``, ``category``), batch 1, the run's K-shot references (``shots``, default the plan's
    largest) set before timing, best of ``repeats``. Metrics: ``fps`` (images/s), ``params`` (learnable
    parameters, millions), ``gflops`` (one ``predict`` on one image), ``peak_memory_gb`` (CUDA peak
    allocated; undefined on a CPU), ``seconds_per_image`` and ``ratio`` to one plain backbone forward.
    The method is built but not trained: its speed does not depend on the learned values. The
    fingerprint holds the configuration, images, references, device and protocol; a stored
    measurement is reused only when it matches (as :func:`run_plan`)."""

    shots = max(plan.shots) if shots is None else shots
    spec = runs.RunSpec(profile.name, dataset, category, plan.method, "efficiency", shots, 0, plan.variant)
    cache = _SampleCache(profile)
    parts = {**run_parts(plan, profile, spec, "mvtec", cache), "metrics": {"speed": "batch 1, best of repeats"},
             "protocol": {"n_images": n_images, "repeats": repeats, "threads": torch.get_num_threads()},
             "device": {"device": str(profile.device), "gpu": runs.provenance(device=str(profile.device))["gpu"]}}
    reuse_stale = fingerprint.reuse_stale_default() if reuse_stale is None else reuse_stale
    if _reusable(spec, parts, profile, reuse_stale):
        return runs.load_results(profile.run_dir, [spec])
    method = methods.build(plan.method, profile=profile.name, **method_options(plan, profile, None)).to(profile.device)
    size, norm = method.image_size, method.normalization
    images = load_images(cache.samples(dataset, category, "test")[:n_images], size, norm, method.interpolation)
    references = load_images(run_references(plan, profile, spec, cache), size, norm, method.interpolation)
    cuda = torch.device(profile.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timing = speed.measure(method, images, references, category, repeats)
    values = {
        "fps": timing["images_per_second"], "seconds_per_image": timing["seconds_per_image"], "ratio": timing["ratio"],
        "cpu_ratio": timing["cpu_ratio"],
        "params": sum(p.numel() for p in method.parameters() if p.requires_grad) / 1e6,
        "gflops": speed.gflops(lambda: method.predict(images[:1].to(method.device), category)),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
    }
    reasons = {} if cuda else {"peak_memory_gb": "measured on CUDA only (benchmarks/methods.py measures a CPU process's peak)"}
    config = method.plain_config()
    runs.write_run(profile.run_dir, spec, values, reasons=reasons, references=parts["references"], config=config,
                   provenance=runs.provenance(weights=method.weights_id, device=str(profile.device)),
                   n_images=len(images), fingerprint_parts=parts)
    return runs.load_results(profile.run_dir, [spec])
