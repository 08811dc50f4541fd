"""The one error every backbone raises when pretrained weights are missing."""
from __future__ import annotations

import os
from pathlib import Path

from sowa_lib.profiles import ProfileNotReadyError


class WeightsNotFoundError(ProfileNotReadyError, FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable (or a given file is absent); the
    message names the file, where to put it, and the argument that takes a local path."""


WEIGHTS_DIR_ENV = "WEIGHTS_DIR"


def weights_cache(kind: str) -> Path | None:
    """``$WEIGHTS_DIR/<kind>`` (``kind``: ``open_clip``, ``timm`` or ``torch``) when ``WEIGHTS_DIR`` is
    set — one shared folder that every cluster worker reads, so workers find the files the driver
    checked and download nothing — else None (each library's own default cache)."""
    root = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(root).expanduser() / kind if root else None


def downloads_disabled() -> bool:
    """Whether downloads are off (every cluster worker runs so): the Hugging Face hub's own switch
    ``HF_HUB_OFFLINE``, honoured here for open_clip URL and torch hub downloads too."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
