"""The one error every backbone raises when pretrained weights are missing."""
from __future__ import annotations

from sowa_lib.profiles import ProfileNotReadyError


class WeightsNotFoundError(ProfileNotReadyError, FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable (or a given file is absent); the
    message names the file, where to put it, and the argument that takes a local path."""
