"""User-facing errors.

Every mistake a user can make (a corrupt file, a wrong shape, an empty mask, a missing model) raises a
subclass of :class:`UserError`. Front ends show its message as one line (the CLI on stderr with exit code 2,
the GUI in a dialog) and never a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the input, explained in one line for the user."""

    exit_code: int = 2


class StudyReadError(UserError):
    """A path that cannot be read as an image study (missing, unreadable, corrupt, not an image)."""


class GeometryMismatchError(UserError):
    """Two images (e.g. a volume and its mask) do not share the same voxel grid."""


class MaskError(UserError):
    """A mask that cannot be used as asked (empty, wrong label, wrong values)."""


class ModelError(UserError):
    """A model folder that is missing, incomplete, or of another version."""


class DeviceError(UserError):
    """A compute device that was asked for but is not available."""


class JobCancelled(Exception):
    """Raised inside a job when its cancellation token is set; not an error for the user."""


class MultipleSeriesError(UserError):
    """A path holds several image series and none was chosen; ``series`` lists them for a chooser.

    ``series`` holds :class:`sd_fsmis.core.io.listing.SeriesInfo` objects (uid, description, size, ...).
    """

    def __init__(self, message: str, series: list | None = None) -> None:
        super().__init__(message)
        self.series = list(series or [])


class SeriesNotFoundError(UserError):
    """The series uid asked for is not in the path; the message lists the ones that are."""
