"""Study profiles: which datasets, auxiliary datasets, shots and seeds a profile runs (DESIGN.md,
"Profiles"). Method-specific sizes live with each method (``AnomalyMethod.profiles``).

``demo``: the embedded benchmark (two disjoint groups of generated categories that play the roles of
MVTec-AD and VisA) and tiny randomly initialised backbones; minutes on a CPU.
``paper``: the official datasets under ``DATA_ROOT`` and pretrained weights; a GPU in practice.
``smoke``: the paper profile with the declared differences of :data:`SMOKE_DIFFERENCES` only (random
weights of the real architectures, fabricated datasets in the six official layouts, one training
step, one seed), so that the paper's code path runs before anyone downloads data or weights.

Profiles are data: nothing here reads a dataset or builds a method. Their preflight (datasets in
place, weights found) is :mod:`sowa_lib.preflight`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from sowa_lib.errors import ProfileNotReadyError
from sowa_lib.methods import SMOKE_METHOD_OPTIONS, method_profile_options
from sowa_lib.vocabulary import DEMO_DATASET, PAPER_DATASETS

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DatasetRef:
    """A benchmark as the study names it (``id``), the loader that reads it and where it lives."""

    id: str
    loader: str
    root: Path


@dataclass(frozen=True)
class Profile:
    name: str
    datasets: dict[str, DatasetRef]
    auxiliary: dict[str, str]
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    unsupervised_datasets: tuple[str, ...]
    device: str = "cpu"
    batch_size: int = 8
    results_dir: Path = field(default=REPO_ROOT / "results")

    @property
    def run_dir(self) -> Path:
        """Where this profile's runs, checkpoints, tables and executed notebooks go."""
        return self.results_dir / self.name

    @property
    def figures_dir(self) -> Path:
        return self.results_dir.parent / "figures" / self.name


#: Which dataset plays each paper dataset's role in a profile (cross-dataset protocol, claim lookup).
DATASET_ROLES: dict[str, dict[str, str]] = {"demo": {"mvtec": "demo_a", "visa": "demo_b"}}


def dataset_for_role(profile: str, role: str) -> str:
    """The dataset of ``profile`` that plays paper dataset ``role`` (itself outside the demo)."""
    return DATASET_ROLES.get(profile, {}).get(role, role)


#: Training options of the methods trained on an auxiliary dataset, by (method, paper dataset trained
#: on): the reference schedules, which depend on the auxiliary set (study protocol, not method code).
#: April-GAN (april_gan_winclip_peers §1.7): 3 epochs with mosaic rate 0.2 on MVTec AD, 15 epochs
#: without mosaic on VisA. SOWA (sowa §2.4): mosaics (rate 0.2) when training on MVTec AD only.
AUXILIARY_TRAINING: dict[tuple[str, str], dict[str, Any]] = {
    ("april_gan", "mvtec"): {"epochs": 3, "mosaic_rate": 0.2},
    ("april_gan", "visa"): {"epochs": 15, "mosaic_rate": 0.0},
    ("sowa", "mvtec"): {"mosaic_rate": 0.2},
    ("sowa", "visa"): {"mosaic_rate": 0.0},
}


def auxiliary_training_options(profile: str, method: str, auxiliary: str) -> dict[str, Any]:
    """:data:`AUXILIARY_TRAINING` of ``method`` trained on dataset ``auxiliary`` of ``profile``, looked
    up by the paper dataset whose role it plays (:data:`DATASET_ROLES`); empty when none is listed."""
    role = {dataset: paper for paper, dataset in DATASET_ROLES.get(profile, {}).items()}.get(auxiliary, auxiliary)
    return dict(AUXILIARY_TRAINING.get((method, role), {}))


# Cross-dataset protocol (sowa spec §2.1; april_gan_winclip_peers §1.7): train on the auxiliary
# dataset's test split. MVTec-AD is the auxiliary set of every target but itself (SOWA's scripts).
PAPER_AUXILIARY = {"mvtec": "visa", "visa": "mvtec", "btad": "mvtec", "dagm": "mvtec", "dtd_synthetic": "mvtec", "mvtec3d": "mvtec"}


def demo_profile(data_root: Path | None = None, results_dir: Path | None = None, device: str = "cpu") -> Profile:
    root = Path(data_root or REPO_ROOT / "data" / "demo")
    datasets = {name: DatasetRef(name, DEMO_DATASET, root / name) for name in ("demo_a", "demo_b")}
    return Profile(
        name="demo",
        datasets=datasets,
        auxiliary={"demo_a": "demo_b", "demo_b": "demo_a"},
        shots=(1, 2, 4),
        seeds=(0, 1),
        unsupervised_datasets=("demo_a", "demo_b"),
        device=device,
        results_dir=Path(results_dir or REPO_ROOT / "results"),
    )


def paper_profile(data_root: Path | None = None, results_dir: Path | None = None, device: str = "cuda") -> Profile:
    root = data_root or os.environ.get("DATA_ROOT")
    if not root:
        raise ProfileNotReadyError("the paper profile needs DATA_ROOT: run `make reproduce-all PROFILE=paper DATA_ROOT=/path/to/data` "
                                   "after `make data DATASETS=mvtec,visa,... DATA_ROOT=/path/to/data`")
    datasets = {name: DatasetRef(name, name, Path(root) / name) for name in PAPER_DATASETS}
    return Profile(
        name="paper",
        datasets=datasets,
        auxiliary=PAPER_AUXILIARY,
        shots=(1, 2, 4),
        seeds=(0, 1, 2, 3, 4),
        unsupervised_datasets=("mvtec", "visa", "mvtec3d"),
        device=device,
        results_dir=Path(results_dir or REPO_ROOT / "results"),
    )


#: Every way the smoke profile differs from the paper profile (DESIGN.md, "Profiles"). Study-level
#: fields are replaced on the paper profile by :func:`smoke_profile`; method options are applied
#: on top of each method's paper options by :func:`method_profile_options`, for the options its
#: constructor has. Nothing else differs, so the smoke runs the paper's code path and cannot drift.
SMOKE_DIFFERENCES: dict[str, Any] = {
    "datasets": "fabricated in the six official on-disk layouts, two categories each, train images in two shades (sowa_lib.data.fabricate)",
    "seeds": (0,),
    "device": "cpu unless asked (the paper profile: cuda)",
    "official checkpoints": "files written in the authors' formats from random weights (sowa_lib.methods.official_weights)",
}
PROFILES = ("demo", "smoke", "paper")


def smoke_profile(data_root: Path | None = None, results_dir: Path | None = None, device: str = "cpu") -> Profile:
    """The paper profile on fabricated data (``<repo>/data/smoke`` by default), with :data:`SMOKE_DIFFERENCES`."""
    paper = paper_profile(Path(data_root or REPO_ROOT / "data" / "smoke"), results_dir, device)
    return replace(paper, name="smoke", seeds=SMOKE_DIFFERENCES["seeds"])


def profile_note(profile: str) -> str:
    """The words every banner, table and figure of ``profile`` carries (not paper numbers, unless paper)."""
    return {"demo": "demo profile: generated benchmark, tiny random models — not paper numbers",
            "smoke": "smoke: random weights, fabricated data — not paper numbers",
            "paper": "paper profile"}.get(profile, f"{profile} profile")


def get_profile(name: str = "demo", data_root: str | Path | None = None, results_dir: str | Path | None = None, device: str | None = None) -> Profile:
    """The profile called ``name`` (one of :data:`PROFILES`); ``device`` defaults to cuda for the paper, else cpu.
    ``results_dir`` defaults to ``$SOWA_RESULTS_DIR`` when set (``make test-notebooks`` points it at
    a temporary folder), else ``<repo>/results``; figures go to ``figures/`` beside it."""
    data_root = Path(data_root) if data_root else None
    results_dir = results_dir or os.environ.get("SOWA_RESULTS_DIR")
    results_dir = Path(results_dir) if results_dir else None
    if name == "demo":
        return demo_profile(data_root, results_dir, device or "cpu")
    if name == "smoke":
        return smoke_profile(data_root, results_dir, device or "cpu")
    if name == "paper":
        return paper_profile(data_root, results_dir, device or "cuda")
    raise ValueError(f"unknown profile {name!r}; use one of {PROFILES}")
