"""The one record every dataset loader yields (DESIGN.md, "Flow")."""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from sowa_lib.data.errors import fix_command
from sowa_lib.errors import CorruptImageError, DatasetNotFoundError


@contextmanager
def _reading(path: Path, dataset: str, root: Path) -> Iterator[None]:
    """Within the block, a vanished ``path`` is a :class:`DatasetNotFoundError` and an undecodable one a
    :class:`CorruptImageError`, each naming the file."""
    try:
        yield
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"{dataset}: file not found (it was listed when the dataset was loaded; "
                                   f"moved or deleted since?)\n  looked at: {path}\n"
                                   f"  fix: {fix_command(dataset, root)}") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise CorruptImageError(f"cannot decode image file {path}: {err}") from err


#: Bytes of decoded files each process keeps (:class:`_DecodedFiles`).
DECODED_FILES_BYTES = 512 * 2**20


class _DecodedFiles:
    """Decoded images and masks of this process, keyed by path, PIL mode, size and modification time,
    least recently used dropped beyond ``max_bytes``. A study reads the same files again for every
    training epoch, ablation variant and run (the demo's ablations decoded each file about 70 times),
    and decoding is most of reading; a rewritten file is decoded again."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._arrays: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def read(self, path: Path, mode: str, dataset: str, root: Path) -> np.ndarray:
        """A copy of ``np.array(<decoded path>.convert(mode))`` (errors: :func:`_reading`)."""
        with _reading(path, dataset, root):
            stat = path.stat()
        key = (path, mode, stat.st_size, stat.st_mtime_ns)
        if key in self._arrays:
            self._arrays.move_to_end(key)
        else:
            self._keep(key, np.array(_open(path, dataset, root).convert(mode)))
        return self._arrays[key].copy()

    def _keep(self, key: tuple, array: np.ndarray) -> None:
        self._arrays[key] = array
        self.bytes += array.nbytes
        while self.bytes > self.max_bytes and len(self._arrays) > 1:
            self.bytes -= self._arrays.popitem(last=False)[1].nbytes


_DECODED = _DecodedFiles(DECODED_FILES_BYTES)


def _open(path: Path, dataset: str, root: Path) -> Image.Image:
    """The decoded image (errors: :func:`_reading`)."""
    with _reading(path, dataset, root):
        image = Image.open(path)
        image.load()
    return image


def _size(path: Path, dataset: str, root: Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header alone (errors: :func:`_reading`)."""
    with _reading(path, dataset, root), Image.open(path) as image:
        return image.size


@dataclass(frozen=True)
class Sample:
    """One image of a benchmark, with where its mask lives.

    ``label`` is 1 for anomalous and 0 for normal. ``mask_path`` is None when the
    benchmark ships no mask for this image (normal images, or MVTec's few unmasked
    defects); :meth:`read_mask` then returns an all-zero mask of the image's size.
    ``relpath`` is the image path relative to the dataset root, the key used in
    meta.json files and in the recorded K-shot reference lists.
    """

    path: Path
    mask_path: Path | None
    label: int
    category: str
    defect: str
    split: str
    dataset: str
    root: Path

    @property
    def relpath(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    def read_image(self) -> np.ndarray:
        """RGB uint8 array [H, W, 3] (grayscale images are replicated to 3 channels)."""
        return _DECODED.read(self.path, "RGB", self.dataset, self.root)

    def read_mask(self) -> np.ndarray:
        """Boolean mask [H, W], binarised ``> 0`` (VisA masks hold class ids)."""
        if self.mask_path is None:
            width, height = _size(self.path, self.dataset, self.root)
            return np.zeros((height, width), dtype=bool)
        return _DECODED.read(self.mask_path, "L", self.dataset, self.root) > 0
