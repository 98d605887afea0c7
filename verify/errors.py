"""One exception base class for the model supply chain, one-line subclasses (huey style)."""
from __future__ import annotations


class VerifyError(Exception):
    """Base class: anything that means the model folder cannot be trusted or fetched."""


class ManifestError(VerifyError):
    """The manifest itself is malformed or unsafe."""


class MissingFileError(VerifyError):
    """A file the manifest lists is not in the model folder."""


class MismatchError(VerifyError):
    """A file exists but its size or SHA-256 differs from the manifest."""


class DownloadError(VerifyError):
    """Every endpoint failed for a file."""


class LocalDiskError(DownloadError):
    """The model folder itself failed (disk full, permissions), whatever the endpoints did."""


class TransientError(VerifyError):
    """One request failed in a way worth retrying: connection error, timeout, 5xx, 429, cut body."""

    def __init__(self, message: str, *, retry_after: float | None = None, connection: bool = False,
                 slow: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.connection = connection
        self.slow = slow  # under the speed floor: a failure, whatever bytes it brought


class EndpointError(VerifyError):
    """This endpoint cannot serve this file (404, 401/403, metadata contradicting the manifest)."""


class BadContentError(VerifyError):
    """A completed download's SHA-256 differs from the manifest; the bytes were deleted."""
