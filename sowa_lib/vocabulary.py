"""Names in words for what the study's frames hold in ids: metrics (with the papers' names and
units), methods, settings, datasets. A leaf: figures, narrative and the report read it; nothing here
knows the data."""
from __future__ import annotations

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
