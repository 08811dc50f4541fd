"""What the notebooks do besides calling the runner, in one place (issue 16, "A narrative per
result"): open a study (profile, executor, categories), the trivial floor scorer of ``00``, the
reference-sharing check of ``02``, the speed table of ``05`` and the maps of ``07``.

Usage in a notebook::

    import sowa_lib.study
    study, runner, categories = sowa_lib.study.open(profile, data_root, results_dir, device, executor)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from sowa_lib.progress import tqdm  # first, so that no third-party tqdm.auto import warns in the notebooks

from sowa_lib import data, runs
from sowa_lib.claims import load_claims
from sowa_lib.data.references import draw_references
from sowa_lib.data.transforms import load_images, load_masks
from sowa_lib.evaluate import Plan, category_predictions, predictions, speed_run
from sowa_lib.executors import Executor, get_executor
from sowa_lib.figures import size_bin_metrics
from sowa_lib.metrics import category_metrics
from sowa_lib.ops import gaussian_blur
from sowa_lib.preflight import prepare
from sowa_lib.profiles import REPO_ROOT, Profile, get_profile


class OpenStudy(NamedTuple):
    """What :func:`open` returns: the profile, the executor the sweeps run on, each dataset's categories."""

    study: Profile
    executor: Executor
    categories: dict[str, list[str]]


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (what notebooks print: no
    machine-specific absolute paths in committed outputs), else as given."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def open(profile: str = "demo", data_root: str | Path | None = None, results_dir: str | Path | None = None,
         device: str | None = None, executor: str = "local", datasets: list[str] | None = None,
         verbose: bool = True) -> OpenStudy:
    """The profile ``profile`` with its datasets in place (the demo benchmark is generated on demand;
    a missing paper dataset raises :class:`~sowa_lib.errors.ProfileNotReadyError` saying what to
    fetch), the executor ``executor`` (:func:`sowa_lib.executors.get_executor`) and the categories of
    ``datasets`` (default: every dataset of the profile). Prints one line saying so when ``verbose``."""
    study = get_profile(profile, data_root, results_dir, device)
    categories = prepare(study, datasets)
    if verbose:
        print(f"profile {study.name} on {study.device}: datasets {', '.join(f'{d} ({len(c)} categories)' for d, c in categories.items())}; "
              f"results in {shown_path(study.run_dir)}")
    return OpenStudy(study, get_executor(executor), categories)


# ---------------------------------------------------------------- 00: the floor

def floor_scores(study: Profile, categories: dict[str, list[str]], shots: int = 4, size: int = 128, sigma: float = 4.0) -> pd.DataFrame:
    """A scorer that knows nothing, for every category: the per-pixel distance of a test image from
    the mean of ``shots`` normal training images (seed 0), blurred, with its maximum as the image
    score, scored by :func:`sowa_lib.metrics.category_metrics`. One row per (dataset, category),
    metric values as fractions."""
    rows = []
    for name, categories_of in categories.items():
        ref = study.datasets[name]
        for category in categories_of:
            test = data.load(ref.loader, ref.root, category, "test")
            normal_mean = load_images(draw_references(data.load(ref.loader, ref.root, category, "train"), shots, seed=0), size).mean(0)
            maps = gaussian_blur((load_images(test, size) - normal_mean).norm(dim=1), sigma=sigma)
            values = category_metrics(maps.amax(dim=(1, 2)), [s.label for s in test], maps, load_masks(test, size))
            rows.append({"dataset": name, "category": category, **values})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- 02: same references for every method

def reference_draws(study: Profile, methods: Sequence[str], setting: str = "few_shot") -> pd.DataFrame:
    """For each default few-shot run of ``methods`` in the store: its (dataset, category, K, seed),
    method, and whether its reference files are the draw most methods used for that key
    (``shared``). One row per run."""
    keys = ["dataset", "category", "shots", "seed"]
    used = pd.DataFrame([{**r["spec"], "references": tuple(r["references"])} for r in runs.iter_runs(study.run_dir)
                         if r["spec"]["setting"] == setting and r["spec"]["method"] in methods and r["spec"]["variant"] == "default"])
    if used.empty:
        return pd.DataFrame(columns=keys + ["method", "shared"])
    common = used.groupby(keys).references.agg(lambda refs: refs.value_counts().index[0]).rename("common")
    used = used.join(common, on=keys)
    return used.assign(shared=used["references"] == used["common"])[keys + ["method", "shared"]]


# ---------------------------------------------------------------- 05: speed

def speed_table(study: Profile, categories: dict[str, list[str]], methods: Sequence[str], shots: int = 4, n_images: int = 4) -> pd.DataFrame:
    """Each of ``methods`` timed by :func:`sowa_lib.evaluate.speed_run` (AGPNet in its few-shot
    setting) on the first ``n_images`` test images of the first category of the first dataset, with
    ``shots`` references: measured and stored as a run of the results store, or read back from it when
    a measurement with the same fingerprint (configuration, images, device, threads) is there. One row
    per method, indexed by method, one column per speed metric (``fps``, ``ratio``, ``cpu_ratio``,
    ``params``, ``gflops``, ...)."""
    dataset = next(iter(categories))
    category = categories[dataset][0]
    rows = []
    for name in tqdm(methods, desc="methods"):
        run = speed_run(Plan(name, "few_shot", (dataset,), shots=(shots,)), study, dataset, category, n_images=n_images)
        rows.append({"method": name, **run.set_index("metric")["value"]})
    table = pd.DataFrame(rows).set_index("method")
    table.attrs.update(dataset=dataset, category=category, images=n_images, shots=shots, device=study.device,
                       threads=torch.get_num_threads())
    return table


def speed_ratios(speeds: pd.DataFrame, reference: str = "sowa", others: Sequence[str] = ("april_gan", "winclip")) -> pd.DataFrame:
    """SOWA's speed figure (fig9, images/s per dataset, from :mod:`sowa_lib.claims`) as ratios
    ``reference / other`` of images per second, beside the same ratio measured in ``speeds``
    (:func:`speed_table`). One row per paper dataset plus a ``measured here`` row."""
    fig9 = load_claims("sowa").query("metric == 'fps'").pivot_table(index="dataset", columns="method", values="value")
    columns = [f"{reference} / {m}" for m in others]
    claimed = pd.DataFrame({c: fig9[reference] / fig9[m] for c, m in zip(columns, others)})
    measured = pd.DataFrame([[float(speeds.loc[reference, "fps"] / speeds.loc[m, "fps"]) for m in others]],
                            columns=columns, index=["measured here"])
    claimed.index = [f"claimed, {d}" for d in claimed.index]
    return pd.concat([claimed, measured])


# ---------------------------------------------------------------- 07: maps for figures

def _anomalous_then_normal(samples: Sequence[Any], anomalous: int, normal: int) -> list[int]:
    return [i for i, s in enumerate(samples) if s.label == 1][:anomalous] + [i for i, s in enumerate(samples) if s.label == 0][:normal]


def hierarchical_maps(study: Profile, dataset: str, category: str, anomalous: int = 4, normal: int = 1) -> tuple[list, dict[str, np.ndarray], np.ndarray]:
    """SOWA zero-shot on a few test images of one category: the samples, each tapped layer's abnormal
    probability ``H1``… (``SOWAOutput.layer_probabilities``, sowa spec fig7) and the fused map that
    ``predict`` returns, and the masks at the maps' resolution."""
    sowa, samples, pred, masks = predictions(Plan("sowa", "zero_shot", (dataset,)), study, dataset, category)
    picked = _anomalous_then_normal(samples, anomalous, normal)
    shown = [samples[i] for i in picked]
    with torch.no_grad():
        layers = sowa(load_images(shown, sowa.image_size, sowa.normalization).to(sowa.device)).layer_probabilities
    columns = {f"H{i + 1}": p[:, 1].cpu().numpy() for i, p in enumerate(layers)} | {"fusion": pred.maps[picked].numpy()}
    return shown, columns, masks[picked].numpy()


def method_maps(study: Profile, methods: Sequence[str], dataset: str, category: str, shots: int, anomalous: int = 4) -> tuple[list, dict[str, np.ndarray], np.ndarray]:
    """Each of ``methods`` at ``shots`` references (seed 0) on the first ``anomalous`` anomalous test
    images of one category (sowa fig6): the samples, each method's maps (at its own resolution) and
    the masks at the first method's resolution."""
    columns, masks, picked, samples = {}, None, None, []
    for method in methods:
        plan = Plan(method, "zero_shot" if shots == 0 else "few_shot", (dataset,), shots=(shots,))
        _, samples, pred, method_masks = predictions(plan, study, dataset, category, shots=shots)
        picked = picked or _anomalous_then_normal(samples, anomalous, 0)
        columns[method] = pred.maps[picked].numpy()
        masks = method_masks[picked].numpy() if masks is None else masks
    return [samples[i] for i in picked], columns, masks


def size_bin_table(study: Profile, methods: Sequence[str], dataset: str, categories: Sequence[str], shots: Sequence[int] = (0, 4)) -> pd.DataFrame:
    """Pixel AUROC and AUPRO per defect-size bin (:func:`sowa_lib.figures.size_bin_metrics`) of each
    method at each K (seed 0), over all test images of ``categories`` pooled; one row per (method,
    K, bin) with ``method``, ``shots``, ``bin``, ``images`` and the two metrics in percent."""
    rows = []
    for method in methods:
        for k in shots:
            plan = Plan(method, "zero_shot" if k == 0 else "few_shot", (dataset,), shots=(k,))
            found = [(pred.maps, masks) for _, _, pred, masks in category_predictions(plan, study, dataset, categories, shots=k)]
            maps = torch.cat([m for m, _ in found])
            masks = torch.cat([m for _, m in found])
            rows.append(size_bin_metrics(maps, masks).assign(method=method, shots=k))
    return pd.concat(rows, ignore_index=True)[["method", "shots", "bin", "images", "pixel_auroc", "aupro"]]
