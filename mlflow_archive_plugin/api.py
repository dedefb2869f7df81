"""The four public verbs: export, import, inspect and verify an archive."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.archive import (
    ReadLimits,
    metadata_problems,
    read_snapshot,
    scan_archive,
    write_archive,
)
from mlflow_archive_plugin.containers import get_container
from mlflow_archive_plugin.errors import CorruptArchiveError, IntegrityError, UnsupportedError
from mlflow_archive_plugin.integrity import CHECKSUM_NAME
from mlflow_archive_plugin.layouts import get_layout
from mlflow_archive_plugin.location import is_folder_target, refuse_existing, resolve
from mlflow_archive_plugin.mlflow_source import read_model
from mlflow_archive_plugin.registry import register
from mlflow_archive_plugin.snapshot import METADATA_NAME, Snapshot
from mlflow_archive_plugin.tracking import probe, resolve_tracking_uri


class _Result:
    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-serialisable data."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class ExportResult(_Result):
    """Where an export went and how to recognise it.

    ``sha256`` is the hash of the archive file's bytes (None for a folder); ``digest`` is the
    content digest (SHA-256 of its ``checksum.txt``), the same whatever the container.
    """

    location: str
    format: str
    container: str
    size: int | None
    sha256: str | None
    file_count: int
    digest: str
    model_name: str | None
    model_version: str | None


@dataclass
class ImportResult(_Result):
    """The registered model version an import produced, or found when ``reused`` is true."""

    name: str
    version: str
    model_uri: str
    reused: bool
    run_id: str | None
    model_id: str | None
    digest: str


@dataclass
class ArchiveInfo(_Result):
    """What an archive holds, read without extracting it or talking to MLflow."""

    location: str
    layout: str
    container: str
    metadata: dict[str, Any] | None
    files: list[dict[str, Any]]
    digest: str | None
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyReport(_Result):
    """Every integrity problem found (one line each, naming the file); ``ok`` if none."""

    location: str
    ok: bool
    problems: list[str]
    checked: int
    digest: str | None


def export_model(
    model_uri: str,
    dest: str | os.PathLike | None = None,
    *,
    format: str = "mlflow",
    container: str | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    storage_options: dict | None = None,
    progress: bool | None = None,
) -> ExportResult:
    """Export the model at ``model_uri`` as an archive at ``dest``.

    ``model_uri`` is any URI MLflow resolves (``models:/<name>/<version>``,
    ``models:/<name>@<alias>``, ``models:/m-<id>``, ``runs:/<run>/<name>``). ``dest`` is a
    file path or fsspec URL, or a folder in which a name is derived from the model's name and
    version; it defaults to the working directory. An existing file is replaced only with
    ``force``; the archive appears there only once complete.
    """
    layout = get_layout(format)
    chosen = get_container(container or layout.default_container)
    if chosen.name not in layout.containers:
        raise UnsupportedError(
            f"format {layout.name!r} cannot use container {chosen.name!r}; "
            f"choose one of: {', '.join(layout.containers)}"
        )
    raw_dest = os.fspath(dest) if dest is not None else os.getcwd() + os.sep
    location = resolve(raw_dest, storage_options)
    into_folder = is_folder_target(location, raw_dest)
    if not into_folder:
        refuse_existing(location, force)  # before any download, not after
    with tempfile.TemporaryDirectory(prefix="mlflow-archive-export-") as scratch:
        snapshot = read_model(
            model_uri, Path(scratch), tracking_uri=tracking_uri, registry_uri=registry_uri
        )
        if into_folder:
            location = location.child(layout.file_stem(snapshot) + chosen.extension)
        written = write_archive(
            snapshot, layout, chosen, location, force=force, show_progress=progress
        )
    version = snapshot.model_version
    return ExportResult(
        location=location.url,
        format=layout.name,
        container=chosen.name,
        size=written.size,
        sha256=written.sha256,
        file_count=len(written.records) + 1,
        digest=written.digest,
        model_name=snapshot.registered_model.name if snapshot.registered_model else None,
        model_version=version.version if version else None,
    )


def import_archive(
    source: str | os.PathLike,
    *,
    name: str | None = None,
    experiment: str | None = None,
    on_exists: str = "reuse",
    aliases: bool = True,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    storage_options: dict | None = None,
    progress: bool | None = None,
    limits: ReadLimits | None = None,
) -> ImportResult:
    """Register the model in the archive at ``source`` as a new model version.

    The archive is extracted into a fresh temporary folder and verified against its
    ``checksum.txt`` before anything is created. Importing the same archive again returns
    the version made the first time (``on_exists="reuse"``); ``"new"`` registers another,
    ``"fail"`` raises :class:`~mlflow_archive_plugin.errors.VersionExistsError`.
    ``limits`` bounds what reading may produce (see :class:`ReadLimits`).
    """
    probe(resolve_tracking_uri(tracking_uri))
    location = resolve(source, storage_options)
    with tempfile.TemporaryDirectory(prefix="mlflow-archive-import-") as scratch:
        root = Path(scratch)
        scanned = scan_archive(location, extract_to=root, show_progress=progress, limits=limits)
        snapshot = read_snapshot(root, scanned)
        problems = metadata_problems(snapshot, scanned)
        if problems:
            raise IntegrityError(f"archive failed verification: {problems[0]}", problems)
        digest = scanned.digest or ""
        registered = register(
            snapshot,
            digest,
            name=name,
            experiment=experiment,
            on_exists=on_exists,
            aliases=aliases,
            tracking_uri=tracking_uri,
            registry_uri=registry_uri,
        )
    return ImportResult(
        name=registered.name,
        version=registered.version,
        model_uri=f"models:/{registered.name}/{registered.version}",
        reused=registered.reused,
        run_id=registered.run_id,
        model_id=registered.model_id,
        digest=digest,
    )


def inspect_archive(
    source: str | os.PathLike,
    *,
    storage_options: dict | None = None,
    limits: ReadLimits | None = None,
) -> ArchiveInfo:
    """Describe the archive at ``source``: layout, container, metadata, files and problems."""
    location = resolve(source, storage_options)
    scanned = scan_archive(location, keep_going=True, show_progress=False, limits=limits)
    metadata = _parse_metadata(scanned.captured.get(METADATA_NAME))
    return ArchiveInfo(
        location=location.url,
        layout=str(metadata.get("layout", "unknown")) if metadata else "unknown",
        container=scanned.container,
        metadata=metadata,
        files=[record.to_dict() for _, record in sorted(scanned.records.items())],
        digest=scanned.digest,
        problems=scanned.integrity_problems(),
    )


def verify_archive(
    source: str | os.PathLike,
    *,
    storage_options: dict | None = None,
    progress: bool | None = None,
    limits: ReadLimits | None = None,
) -> VerifyReport:
    """Check every file of the archive at ``source`` against ``checksum.txt``, reporting all
    problems at once rather than stopping at the first."""
    location = resolve(source, storage_options)
    scanned = scan_archive(location, keep_going=True, show_progress=progress, limits=limits)
    problems = scanned.integrity_problems()
    raw = scanned.captured.get(METADATA_NAME)
    if raw is not None:
        try:
            snapshot = Snapshot.from_json(raw, Path("."))
        except CorruptArchiveError as exc:
            problems.append(f"{METADATA_NAME}: {exc}")
        else:
            problems.extend(metadata_problems(snapshot, scanned))
    checked = len([path for path in scanned.records if path != CHECKSUM_NAME])
    return VerifyReport(location.url, not problems, problems, checked, scanned.digest)


def _parse_metadata(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    return Snapshot.from_json(raw, Path(".")).to_document()
