"""User-facing errors.

Every error a user can cause (bad dataset, unknown backbone, bad weights file) is a
`ClassifierError`. Its message names the file or value and says what to do; the CLI prints it on
one line and exits with code 2, the app shows it in an `st.error` box.
"""

from __future__ import annotations


class ClassifierError(Exception):
    """Base class for errors caused by user input, with a message meant for the user."""


class DatasetError(ClassifierError):
    """The dataset cannot be read or cannot be trained on."""


class ArchiveError(DatasetError):
    """An uploaded archive is unsafe or exceeds the configured limits."""


class ImageError(ClassifierError):
    """One image file cannot be used; `reason` is a short phrase for the dataset summary."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelError(ClassifierError):
    """Unknown backbone or a model that cannot be built."""


class WeightsError(ClassifierError):
    """Weights cannot be loaded: wrong format, keys, shapes, or unreachable source."""


class RunError(ClassifierError):
    """A run directory is missing, incomplete or would be overwritten."""
