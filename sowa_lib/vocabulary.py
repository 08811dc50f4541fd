"""The study's names, defined once: which methods, datasets, settings and metrics there are (the
ids that claims, runs, profiles, data loaders, metrics and tables share), and their names in words
for what the study's frames hold in ids (with the papers' names and units). A leaf: it imports
nothing, knows no data, and every layer may read it.
"""
from __future__ import annotations

#: The methods this project implements: the method registry's names (:func:`sowa_lib.methods.available`,
#: tests/test_vocabulary.py). Claims name other methods too: competitors, as printed, in lower snake case.
METHODS = ("sowa", "april_gan", "winclip", "spade", "padim", "patchcore", "agpnet")

#: The paper profile's benchmarks; each is read by the loader of the same name (:data:`sowa_lib.data.DATASETS`).
PAPER_DATASETS = ("mvtec", "visa", "btad", "dagm", "dtd_synthetic", "mvtec3d")
#: The embedded benchmark's loader (its two groups ``demo_a``, ``demo_b`` play MVTec-AD and VisA).
DEMO_DATASET = "demo"
#: Datasets the claims name: the paper profile's plus ``vand2023``, the VAND 2023 challenge test set
#: (a modified VisA whose ground truth is not public), which only the April-GAN leaderboards use.
CLAIM_DATASETS = PAPER_DATASETS + ("vand2023",)

#: Settings of a run (:class:`sowa_lib.runs.RunSpec`); ``efficiency`` is a speed measurement (fps,
#: params, GFLOPs, peak memory) of one method configuration on one category's test images.
RUN_SETTINGS = ("zero_shot", "few_shot", "multi_class", "one_class", "efficiency")
#: Settings of the claims: the runs' plus the papers' ablation tables and the VAND leaderboards.
CLAIM_SETTINGS = RUN_SETTINGS + ("ablation", "leaderboard")

#: The seven metrics of one category (:func:`sowa_lib.metrics.category_metrics`), values in [0, 1].
QUALITY_METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
#: What a speed run measures and the papers print about cost (fps in images/s, params in millions,
#: gflops in GFLOPs per image).
EFFICIENCY_METRICS = ("fps", "params", "gflops")
#: Printed by the papers, produced by no run: ``vand_f1max``, the VAND 2023 challenge score (per
#: category the harmonic mean of image and pixel F1-max, then the mean over categories; April-GAN
#: Tables 1-2, as a fraction); ``pixel_auroc_gain``, ``aupro_gain``: gain in points from 0-shot to
#: 4-shot per defect-size bin (SOWA fig8(c), digitized).
EXTRA_METRICS = ("vand_f1max", "pixel_auroc_gain", "aupro_gain")
#: Every metric a claim may name.
CLAIM_METRICS = QUALITY_METRICS + EFFICIENCY_METRICS + EXTRA_METRICS

#: Metric id -> the papers' name for it, with its unit. The papers' "AC" is image-level anomaly
#: classification and "AS" pixel-level anomaly segmentation; these labels say it in words.
METRIC_LABELS = {
    "image_auroc": "image AUROC (%)",
    "image_ap": "image AP (%)",
    "image_f1max": "image F1-max (%)",
    "pixel_auroc": "pixel AUROC (%)",
    "pixel_ap": "pixel AP (%)",
    "pixel_f1max": "pixel F1-max (%)",
    "aupro": "pixel AUPRO (%)",
    "fps": "images per second",
    "params": "learnable parameters (M)",
    "gflops": "GFLOPs per image",
    "vand_f1max": "VAND F1-max score (fraction)",
    "pixel_auroc_gain": "pixel AUROC gain, 0 → 4 shots (points)",
    "aupro_gain": "pixel AUPRO gain, 0 → 4 shots (points)",
}

METHOD_LABELS = {
    "winclip": "WinCLIP", "april_gan": "April-GAN", "sowa": "SOWA", "agpnet": "AGPNet",
    "spade": "SPADE", "padim": "PaDiM", "patchcore": "PatchCore",
}

#: Metric ids as the papers' tables print them (the rendered tables' heads).
METRIC_HEADS = {
    "image_auroc": "image AUROC", "image_ap": "image AP", "image_f1max": "image F1-max", "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP", "pixel_f1max": "pixel F1-max", "aupro": "AUPRO", "fps": "FPS (img/s)", "params": "params (M)",
    "gflops": "GFLOPs", "vand_f1max": "VAND F1-max", "pixel_auroc_gain": "pixel AUROC gain", "aupro_gain": "AUPRO gain",
}

#: Dataset ids as the papers print them.
DATASET_LABELS = {"mvtec": "MVTec-AD", "visa": "VisA", "btad": "BTAD", "dagm": "DAGM", "dtd_synthetic": "DTD-Synthetic",
                  "mvtec3d": "MVTec 3D-AD", "vand2023": "VAND 2023"}

SETTING_LABELS = {
    "zero_shot": "zero-shot", "few_shot": "few-shot", "multi_class": "multi-class (one model for all categories)",
    "one_class": "one-class (one model per category)",
}


def metric_label(metric: str) -> str:
    """The words for ``metric`` (the id itself when it has none)."""
    return METRIC_LABELS.get(metric, metric)


def metric_name(metric: str) -> str:
    """:func:`metric_label` without its unit, for running text: ``pixel AUPRO``."""
    return metric_label(metric).split(" (")[0]


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def setting_label(setting: str) -> str:
    return SETTING_LABELS.get(setting, setting.replace("_", "-"))
