"""Read and write the ``meta.json`` of April-GAN, AnomalyCLIP, ADer and SOWA (datasets spec §2.3).

::

    {"train": {"<cls>": [{"img_path": "<cls>/train/good/000.png", "mask_path": "",
                          "cls_name": "<cls>", "specie_name": "good", "anomaly": 0}, ...]},
     "test":  {"<cls>": [...]}}

Paths are relative to the dataset root. Variants handled on read: AnomalyCLIP's DAGM keys
``"Train"``/``"Test"`` (split keys match case-insensitively), VisA's ``specie_name=""`` (read as
``"good"``/``"bad"`` from ``anomaly``, as the VisA loader names them) and ADer's MVTec-3D
``"validation"`` key. Records are returned sorted by image path, like the loaders.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from sowa_lib.data.errors import bad_layout, not_found, require_category
from sowa_lib.data.sample import Sample

RECORD_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
UNNAMED_DEFECTS = ("good", "bad")
META_LAYOUT = ('{"<split>": {"<cls>": [{"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}, ...]}} '
               "with paths relative to the dataset root")


def sample_record(sample: Sample) -> dict[str, Any]:
    """One meta.json record; the mask path is ``""`` when the sample has none."""
    mask = sample.mask_path.relative_to(sample.root).as_posix() if sample.mask_path is not None else ""
    return {"img_path": sample.relpath, "mask_path": mask, "cls_name": sample.category,
            "specie_name": sample.defect, "anomaly": sample.label}


def write_meta_json(samples_by_split: Mapping[str, Sequence[Sample]], path: Path) -> None:
    """Write ``{split_key: {category: [record, ...]}}`` atomically (temp file, then rename).

    The mapping's keys are written as given (``"train"``, ``"test"``, or ``"Train"`` for DAGM
    interop). All samples must share one dataset root, to which the paths are made relative.
    """
    path = Path(path)
    roots = {s.root for samples in samples_by_split.values() for s in samples}
    if len(roots) > 1:
        raise ValueError(f"meta.json paths are relative to one dataset root; got {sorted(map(str, roots))}")
    meta: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for split, samples in samples_by_split.items():
        by_category: dict[str, list[dict[str, Any]]] = {}
        for sample in samples:
            by_category.setdefault(sample.category, []).append(sample_record(sample))
        meta[split] = by_category
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(meta, stream, indent=4)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _split_table(meta: Any, path: Path, root: Path, dataset: str, split: str) -> dict[str, list[dict[str, Any]]]:
    keys = [key for key in (meta if isinstance(meta, dict) else {}) if key.lower() == split.lower()]
    if not keys:
        available = ", ".join(meta) if isinstance(meta, dict) else "(not a JSON object)"
        raise bad_layout(dataset, path, META_LAYOUT, root, f"meta.json has no {split!r} split; it has: {available}")
    return meta[keys[0]]


def _record_sample(record: Any, split: str, dataset: str, root: Path, path: Path) -> Sample:
    if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
        raise bad_layout(dataset, path, META_LAYOUT, root, f"malformed meta.json record {record!r}")
    label = int(record["anomaly"])
    if label not in (0, 1):
        raise bad_layout(dataset, path, META_LAYOUT, root, f"anomaly must be 0 or 1 in {record!r}")
    image = root / record["img_path"]
    mask = root / record["mask_path"] if record["mask_path"] else None
    for file in (image, mask):
        if file is not None and not file.is_file():
            raise not_found(dataset, file, META_LAYOUT, root, f"{path.name} names a file that does not exist")
    defect = record["specie_name"] or UNNAMED_DEFECTS[label]
    return Sample(image, mask, label, record["cls_name"], defect, split, dataset, root)


def read_meta(path: Path, root: Path, dataset: str) -> Any:
    """The parsed JSON of ``path``; a missing or unparsable file raises a :class:`DatasetError`."""
    path = Path(path)
    if not path.is_file():
        raise not_found(dataset, path, META_LAYOUT, Path(root), "meta.json not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise bad_layout(dataset, path, META_LAYOUT, Path(root), f"meta.json is not valid JSON: {err}") from err


def meta_json_categories(path: Path, root: Path, split: str = "test", *, dataset: str) -> list[str]:
    """Categories listed under ``split`` in a meta.json, sorted."""
    return sorted(_split_table(read_meta(path, root, dataset), Path(path), Path(root), dataset, split))


def load_meta_json(path: Path, root: Path, split: str, category: str | None = None, *, dataset: str) -> list[Sample]:
    """Samples of ``split`` (any case; ``"validation"`` for ADer's MVTec-3D) from a meta.json.

    ``root`` is the dataset root the paths are relative to; ``category=None`` reads every category.
    ``Sample.split`` is the lower-cased key, so DAGM's ``"Train"`` gives ``"train"``.
    """
    path, root = Path(path), Path(root)
    table = _split_table(read_meta(path, root, dataset), path, root, dataset, split)
    if category is not None:
        require_category(dataset, category, sorted(table), root, META_LAYOUT, looked_at=path)
    wanted = sorted(table) if category is None else [category]
    samples = [_record_sample(record, split.lower(), dataset, root, path) for cls in wanted for record in table[cls]]
    return sorted(samples, key=lambda s: (s.category, s.path))
