"""Exceptions the user is meant to read.

Every error that comes from user input (a file, an image, a setting) derives
from :class:`CVDMError`; the CLI turns it into one line and exit code 2, the
napari widgets into one notification.
"""


class CVDMError(Exception):
    """Base class for errors caused by user input, with a readable message."""


class ModelFileError(CVDMError):
    """A model file is missing, corrupt, truncated, foreign or too new."""


class InputError(CVDMError, ValueError):
    """An image or setting cannot be used (wrong shape, NaN, wrong task...)."""


class Cancelled(CVDMError):
    """Long work was stopped at the user's request.

    ``partial``: what was finished before the stop (e.g. a reconstruction from the rounds of
    samples already drawn), or None.
    """

    def __init__(self, message: str = "Stopped.", partial=None):
        super().__init__(message)
        self.partial = partial
