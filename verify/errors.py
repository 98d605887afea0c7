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
