"""One exception hierarchy: every failure a user can cause is an :class:`ArchiveError`.

Each message is a single line that says what was wrong and what to do about it, so the
CLI can print it as it is and exit non-zero without a traceback.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base class of every error this plugin raises on purpose."""

    exit_code = 1


class SourceNotFoundError(ArchiveError):
    """An archive location or model URI does not exist."""


class NotAnArchiveError(ArchiveError):
    """The bytes at a location are not in any container format the plugin reads."""


class CorruptArchiveError(ArchiveError):
    """An archive is truncated, damaged, or its metadata cannot be parsed."""


class IntegrityError(CorruptArchiveError):
    """A file in an archive does not match ``checksum.txt``, or is missing or extra.

    ``problems`` holds one line per file so a caller can report all of them at once.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class SignatureError(IntegrityError):
    """An archive is not signed, or its signature does not verify with the given key."""


class UnsafeArchiveError(ArchiveError):
    """An archive could escape its destination, exhaust the machine, or run code when loaded.

    Raised for unsafe entry names, links and special files, archives past the read limits,
    and (with ``scan="strict"``) pickles that import dangerous or unknown globals.
    ``reason`` is the bare cause where one is known (``"backslash in name"``).
    """

    reason: str = ""


class InsufficientSpaceError(ArchiveError):
    """Reading or writing an archive needs more disk than the file system has free."""


class DestinationExistsError(ArchiveError):
    """The export destination already exists and ``force`` was not given."""


class UnsupportedError(ArchiveError):
    """A format, container or option that the plugin does not support."""


class ModelNotFoundError(ArchiveError):
    """A model URI that MLflow cannot resolve."""


class TrackingServerError(ArchiveError):
    """The tracking server or registry cannot be reached or refused a request."""


class VersionExistsError(ArchiveError):
    """Import with ``on_exists='fail'`` found a version made from the same archive."""


class EncryptionError(ArchiveError):
    """A key is missing, malformed or wrong, or an encrypted model file does not decrypt."""
