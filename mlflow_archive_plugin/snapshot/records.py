"""The names and records every part agrees on: a safe entry name, and one file's size and hash.

Both the snapshot and the containers use them, so they live with the shared shape.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mlflow_archive_plugin.errors import UnsafeArchiveError

_DRIVE = re.compile(r"^[A-Za-z]:")
# File systems refuse longer segments (NAME_MAX); the name bound leaves room under PATH_MAX
# for the temporary folder an archive is extracted into.
MAX_SEGMENT_BYTES = 255
MAX_NAME_BYTES = 1024


def safe_entry_name(raw: str) -> str:
    """Normalise an archive entry name, refusing any that could escape the destination.

    A leading ``./`` (as tar writes) is dropped; absolute paths, ``..`` or empty segments,
    backslashes, drive letters and NUL bytes are refused with a one-line reason.
    """
    name = raw
    while name.startswith("./"):
        name = name[2:]
    reason = None
    if not name:
        reason = "empty name"
    elif "\x00" in name:
        reason = "NUL byte in name"
    elif "\\" in name:
        reason = "backslash in name"
    elif name.startswith("/"):
        reason = "absolute path"
    elif _DRIVE.match(name):
        reason = "drive letter"
    elif any(part in ("", ".", "..") for part in name.rstrip("/").split("/")):
        reason = "'..', '.' or empty path segment"
    elif len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        reason = f"name longer than {MAX_NAME_BYTES} bytes"
    elif any(len(part.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES
             for part in name.split("/")):
        reason = f"a path segment longer than {MAX_SEGMENT_BYTES} bytes"
    if reason is not None:
        error = UnsafeArchiveError(
            f"refused archive entry {raw!r}: {reason}; the archive is unsafe"
        )
        error.reason = reason
        raise error
    return name


@dataclass(frozen=True)
class FileRecord:
    """The size and SHA-256 of one archive entry, measured while it was written or read."""

    path: str
    size: int
    sha256: str

    @classmethod
    def of_bytes(cls, path: str, data: bytes) -> FileRecord:
        """The record of generated content."""
        return cls(path, len(data), hashlib.sha256(data).hexdigest())

    def to_dict(self) -> dict[str, object]:
        """The record as it appears in the metadata document's file list."""
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


__all__ = ["MAX_NAME_BYTES", "MAX_SEGMENT_BYTES", "FileRecord", "safe_entry_name"]
