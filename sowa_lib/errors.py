"""The errors raised across the library's layers, in one low module that imports nothing of it, so
that a low layer (data, backbones) raises what a high one (the runner, the preflight, a notebook)
catches without importing upward. Every message is meant for the user as is and says what to do.

The library's exception classes are defined here, not beside the code that raises them
(tests/test_layers.py); the messages of the dataset errors are composed by :mod:`sowa_lib.data.errors`.
"""
from __future__ import annotations


class ProfileNotReadyError(RuntimeError):
    """A profile's datasets or weights are missing (:mod:`sowa_lib.preflight`); the message says what to do."""


class WeightsNotFoundError(ProfileNotReadyError, FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable (or a given file is absent); the
    message names the file, where to put it, and the argument that takes a local path. Every
    backbone raises it (:mod:`sowa_lib.backbones.weights`)."""


class DatasetError(RuntimeError):
    """Base class of every dataset problem (datasets spec §2.2); the message names the dataset, the
    path looked at, the expected layout and the ``make data`` command that fixes it."""


class DatasetNotFoundError(DatasetError):
    """The dataset (or a file a split list names) is not where the loader looked."""


class DatasetLayoutError(DatasetError):
    """The dataset is there but does not follow the official layout (unpaired masks, bad CSV, ...)."""


class UnknownCategoryError(DatasetError, KeyError):
    """A category that the dataset does not contain; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ChecksumError(DatasetError):
    """A downloaded archive's hash differs from the published one."""


class DownloadError(DatasetError):
    """The download failed (no network, HTTP error); the message says how to place the archive by hand."""


class UnsafeArchiveError(DatasetError):
    """An archive member would land outside the extraction folder, or is a link or device."""


class ManualDownloadRequired(DatasetError):
    """The benchmark has no direct URL; the message says what to download and where to put it."""


class CorruptImageError(RuntimeError):
    """An image or mask file exists but cannot be decoded."""


class ClaimsError(ValueError):
    """A claims file breaks the schema (:mod:`sowa_lib.claims`); the message names the file row."""


class SweepError(RuntimeError):
    """Some jobs of a sweep still failed after their retries (:mod:`sowa_lib.executors`); the others
    completed and are in the store."""


class StaleCheckpointError(ValueError):
    """A checkpoint was written by another configuration, data or code version than the one loading it
    (:mod:`sowa_lib.training`); the message names the parts that differ."""
