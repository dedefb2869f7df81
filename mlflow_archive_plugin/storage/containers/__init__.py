"""Containers by name, and detection of a container from its first bytes, in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mlflow_archive_plugin.errors import NotAnArchiveError, UnsupportedError
from mlflow_archive_plugin.storage.containers.base import ContainerReader, ContainerWriter
from mlflow_archive_plugin.storage.containers.folder import FolderReader, FolderWriter
from mlflow_archive_plugin.storage.containers.tar import TarReader, TarWriter
from mlflow_archive_plugin.storage.containers.zip import ZipReader, ZipWriter


@dataclass(frozen=True)
class Container:
    """A container format: its name, file extension and how to write it."""

    name: str
    extension: str
    open_writer: Callable[..., ContainerWriter]

    @property
    def is_folder(self) -> bool:
        """Whether the archive is a directory rather than a single file."""
        return self.name == "folder"


CONTAINERS: dict[str, Container] = {
    "zip": Container("zip", ".zip", ZipWriter),
    "tar": Container("tar", ".tar", lambda target: TarWriter(target, "")),
    "tar.gz": Container("tar.gz", ".tar.gz", lambda target: TarWriter(target, "gz")),
    "tar.xz": Container("tar.xz", ".tar.xz", lambda target: TarWriter(target, "xz")),
    "tar.bz2": Container("tar.bz2", ".tar.bz2", lambda target: TarWriter(target, "bz2")),
    "folder": Container("folder", "", FolderWriter),
}
_ALIASES = {"tgz": "tar.gz", "gz": "tar.gz", "xz": "tar.xz", "bz2": "tar.bz2", "dir": "folder",
            "bentomodel": "tar.xz"}
# Every name a user may give for a container, aliases included.
CONTAINER_NAMES = tuple(sorted([*CONTAINERS, *_ALIASES]))


def get_container(name: str) -> Container:
    """The container called ``name`` (``tgz`` and friends accepted as aliases)."""
    key = _ALIASES.get(name, name)
    if key not in CONTAINERS:
        choices = ", ".join(CONTAINERS)
        raise UnsupportedError(f"unknown container {name!r}; choose one of: {choices}")
    return CONTAINERS[key]


def detect_container(head: bytes) -> str:
    """The container name for a file that starts with ``head`` (at least 512 bytes if present)."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    if head.startswith(b"BZh"):
        return "tar.bz2"
    if head[257:262] == b"ustar":
        return "tar"
    raise NotAnArchiveError(
        "not an archive: expected a zip or tar (gz, xz, bz2) file or an archive folder"
    )


def open_reader(container: str, source: BinaryIO | Path) -> ContainerReader:
    """A reader for ``source``: a binary stream for file containers, a directory for folders."""
    if container == "folder":
        return FolderReader(Path(source))  # type: ignore[arg-type]
    if container == "zip":
        return ZipReader(source)  # type: ignore[arg-type]
    return TarReader(source, container)  # type: ignore[arg-type]


__all__ = [
    "CONTAINERS",
    "CONTAINER_NAMES",
    "Container",
    "ContainerReader",
    "ContainerWriter",
    "detect_container",
    "get_container",
    "open_reader",
]
