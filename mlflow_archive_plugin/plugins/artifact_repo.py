"""``archive+<scheme>`` artifact repositories: MLflow reads, writes and stores models as archives.

MLflow picks an artifact repository by the scheme of a URI; this one is registered for
``archive+file``, ``archive+s3``, ``archive+gs``, ``archive+memory``, ``archive+ftp``,
``archive+http`` and ``archive+https``. Without its ``archive+`` prefix the URI is an fsspec
URL, reached through :mod:`mlflow_archive_plugin.storage.location`. One class serves three uses:

- **Reading an archive as a model.** A path that names an archive file (``x.zip``, ``x.mar``,
  ``x.bentomodel`` ...) reads as the folder of the MLflow model inside it, once its checksums
  are verified, so ``mlflow.pyfunc.load_model("archive+file:///abs/x.zip")`` works. MLflow
  reaches it in two shapes: a repository rooted at the archive itself (``Model.load`` asks it
  for ``MLmodel``), or one rooted at the archive's folder and asked for ``x.zip`` (how
  ``_download_artifact_from_uri`` splits a URI). Both resolve the same way: the first path
  component named like an archive that is a file is the archive.
- **Writing an archive.** ``log_artifacts(model_dir)`` on a repository whose URI names a new
  archive file writes it, in the layout its name asks for (native for ``.zip``, ``.tar.gz``
  ...), with ``mlflow-archive.json`` and ``checksum.txt``, published atomically.
- **A store.** Rooted at a folder (an experiment's artifact location), a model directory
  logged with ``log_artifacts`` (a folder holding ``MLmodel``, what MLflow 3's ``log_model``
  uploads) is kept as one archive object, ``.mlflow-archive.zip`` in the folder the model's
  files belong to. Listing and downloading merge its files with the plain ones, so MLflow and
  its UI see the files as logged. Files logged one at a time are stored as they come; a plain
  file shadows a packed one of the same path, since it was logged later, and packing a model
  again merges it with what was packed there before, so nothing logged becomes unreachable.

Failures reach MLflow as one-line :class:`~mlflow.exceptions.MlflowException` errors.

Nothing in a store is trusted, since anyone who can write the folder can plant things in it.
Paths given to the repository get MLflow's own errors (``Invalid artifact path`` for
writes, ``Invalid path`` for reads: absolute paths, ``..``, ``/``), and in an ``archive+file``
store every path read, listed, written or deleted is resolved first: a symbolic link that
leads out of the store is never followed (MLflow's ``resolved path is outside the artifact
directory``), a listing leaves such a link out, and deleting the link removes the link only.
There, plain files are written as MLflow's local repository writes them (a hidden
``.artifact.uploading.`` file in the destination folder, renamed into place), empty folders
are kept, ``download_artifacts`` without a destination returns the stored file itself, and
``log_artifact_from_stream`` streams an upload straight into the store.

MLflow imports this module while ``import mlflow`` itself is still running (it registers
entry points then), so only the MLflow modules already loaded by that point are imported at
the top; the rest, and the plugin modules that need ``mlflow.MlflowClient``, inside functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import shutil
import tempfile
import threading
import weakref
from collections.abc import AsyncIterable, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from mlflow.entities.file_info import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.store.artifact.artifact_repo import ArtifactRepository, verify_artifact_path
from mlflow.utils.uri import validate_path_is_safe, validate_path_within_directory

try:  # MLflow 3.x releases before streaming uploads have no such mixin
    from mlflow.store.artifact.artifact_repo import StreamUploadMixin
except ImportError:  # pragma: no cover - depends on the MLflow release
    class StreamUploadMixin:  # type: ignore[no-redef]
        """Stand-in: the tracking server then uploads through a temporary file."""

from mlflow_archive_plugin.errors import (
    ArchiveError,
    DestinationExistsError,
    IntegrityError,
    SourceNotFoundError,
    UnsafeArchiveError,
    UnsupportedError,
)
from mlflow_archive_plugin.mlflow_side.archives import archive_stem, write_model_folder
from mlflow_archive_plugin.mlflow_side.materialize import is_archive_name, materialize
from mlflow_archive_plugin.plugins.artifact_uris import (
    PREFIX,
    S3_ENDPOINT_VARIABLE,
    STORAGE_OPTIONS_VARIABLE,
    enforce_host_policy,
    inner_url,
    storage_options,
)
from mlflow_archive_plugin.storage.location import (
    PARTIAL_NAME,
    Location,
    publish_file,
    remote_errors,
    resolve,
)

_logger = logging.getLogger(__name__)

# Where a store keeps the model packed into a folder: hidden, so no listing shows it, and
# inside that folder, so the folder exists (as a directory or an object prefix) once packed.
PACKED_NAME = ".mlflow-archive.zip"
# The prefix of the hidden file a plain file is written to in a local store before it is
# renamed into place: MLflow's local repository's, so neither lists the other's uploads.
UPLOADING_PREFIX = ".artifact.uploading."
# The folder MLflow keeps a run's and a logged model's artifacts in.
ARTIFACTS_FOLDER = "artifacts"
_COPY_BLOCK = 1024 * 1024
MLMODEL = "MLmodel"


class ArchiveArtifactRepository(ArtifactRepository, StreamUploadMixin):
    """An MLflow artifact repository for ``archive+<fsspec URL>`` URIs (see the module)."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None,
                 registry_uri: str | None = None) -> None:
        super().__init__(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        self._inner = inner_url(artifact_uri)
        enforce_host_policy(self._inner)
        with _mlflow_errors():
            self._root = resolve(self._inner, storage_options(self._inner))
        # Packed models read so far: (archive path, its fsspec ukey) -> extracted model folder.
        self._models: dict[tuple[str, str], Path | None] = {}
        self._lock = threading.RLock()
        # The folder a download in this thread reads (links below it stay inside it).
        self._scope = threading.local()
        self._scratch: Path | None = None
        # Where the root sits inside an archive: the archive's location and the path within.
        self._archive: tuple[Location, str] | None = self._archive_of_root()
        # The store's folder on this machine (``archive+file`` rooted at a folder), else None.
        self._artifact_dir: str | None = (
            os.path.abspath(self._root.path) if self._archive is None and self._root.is_local
            else None
        )

    @property
    def _artifacts_folder(self) -> str | None:
        """The MLflow ``artifacts`` folder (of a run or logged model) the root is below, if
        it is below one rather than that folder itself."""
        if self._artifact_dir is None:
            return None
        parts = Path(self._artifact_dir).parts
        inner = [index for index, part in enumerate(parts[:-1]) if part == ARTIFACTS_FOLDER]
        return str(Path(*parts[:inner[-1] + 1])) if inner else None

    @property
    def artifact_dir(self) -> str | None:
        """The folder of an ``archive+file`` store; None for an archive or a remote store."""
        return self._artifact_dir

    # ------------------------------------------------------------------ MLflow's interface

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        """Store one file as it comes (a packed model's file of the same path is shadowed)."""
        folder = _write_path(artifact_path)
        name = os.path.basename(local_file)
        _check_file_name(name)
        relative = _join(folder, name)
        self._contain(relative)
        with _mlflow_errors():
            self._refuse_inside_archive(folder, "add a file to")
            if self._artifact_dir is not None:
                with contextlib.suppress(OSError):
                    if os.path.samefile(local_file, self._full(relative)):
                        return  # the file is already where it would be logged
            self._put_plain(Path(local_file), relative, keep_stat=True)

    def log_artifact_from_stream(self, stream: BinaryIO, artifact_file_name: str,
                                 artifact_path: str | None = None) -> None:
        """Store the bytes of ``stream`` as one file (the tracking server's uploads), without
        a copy on the way; any folders in ``artifact_file_name`` are ignored. Errors of the
        stream itself, and of the local disk, reach the caller as they are, as from MLflow's
        local repository."""
        folder = _write_path(artifact_path)
        name = os.path.basename(str(artifact_file_name).replace("\\", "/"))
        _check_file_name(name)
        relative = _join(folder, name)
        self._contain(relative)
        with _mlflow_errors(os_errors=False):
            self._refuse_inside_archive(folder, "add a file to")
            self._put_stream(stream, relative, _set_default_mode)

    async def log_artifact_from_async_stream(self, chunks: AsyncIterable[bytes],
                                             artifact_file_name: str,
                                             artifact_path: str | None = None) -> None:
        """:meth:`log_artifact_from_stream` for chunks that arrive asynchronously: they are
        gathered into a private temporary file first, then stored in one step."""
        with tempfile.TemporaryDirectory(prefix="mlflow-archive-upload-") as scratch:
            staged = Path(scratch, "upload")
            with staged.open("wb") as handle:
                async for chunk in chunks:
                    await asyncio.to_thread(handle.write, chunk)
            with staged.open("rb") as stream:
                await asyncio.to_thread(self.log_artifact_from_stream, stream,
                                        artifact_file_name, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        """Write an archive (the URI names one), or store the folder: every model directory
        in it (a folder holding ``MLmodel``) as one archive object, other files as they are."""
        local = Path(local_dir)
        relative = _write_path(artifact_path)
        self._contain(relative)
        with _mlflow_errors():
            if not local.is_dir():
                raise ArchiveError(f"{local_dir} is not a folder; log a folder of files")
            if self._archive is not None:
                if self._archive[1] or relative:
                    self._refuse_inside_archive(relative, "add files to")
                self._write_archive(local, self._archive[0])
                return
            if relative and is_archive_name(relative):
                self._refuse_inside_archive(posixpath.dirname(relative), "add files to")
                self._write_archive(local, self._at(self._full(relative)))
                return
            self._refuse_inside_archive(relative, "add files to")
            self._store_folder(local, relative)

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        """The files and folders directly under ``path``; empty if ``path`` is a file."""
        relative = _read_path(path)
        self._contain(relative)
        with _mlflow_errors():
            self._forget_listings()
            inside = self._inside_archive(relative)
            if inside is not None:
                model_dir, within, shown = inside
                return _list_local(model_dir, within, shown)
            return self._list_store(relative)

    def _is_directory(self, artifact_path: str | None) -> bool:
        relative = _read_path(artifact_path)
        if self._artifact_dir is not None:
            self._contain(relative)
            if os.path.isdir(self._full(relative)):
                return True  # an empty folder is a folder too, as in MLflow's local store
        return super()._is_directory(artifact_path)

    def download_artifacts(self, artifact_path: str | None, dst_path: str | None = None) -> str:
        """MLflow's download; without ``dst_path``, a plain file or folder of a local store is
        returned where it is (as MLflow's local repository does), not copied.

        A folder of a local store downloads with what is in that folder only: a link below
        it is followed when it stays inside the folder. MLflow roots a repository at the
        parent of a URI's last name (``mlflow artifacts download --artifact-uri <store>``
        asks the store's parent for ``<store>``), so this keeps a download of a store, or of
        a model's folder, from taking in files beside it through a planted link."""
        relative = _read_path(artifact_path)
        self._contain(relative)
        outer = getattr(self._scope, "folder", None)
        if outer is None and self._artifact_dir is not None and os.path.isdir(
                self._full(relative)):
            self._scope.folder = relative
        try:
            if not dst_path and self._artifact_dir is not None:
                with _mlflow_errors():
                    direct = self._direct_local(relative)
                if direct is not None:
                    return direct
                if relative and not self._found_anywhere(relative):
                    raise self._no_such_artifact(relative)
            return super().download_artifacts(artifact_path, dst_path)
        finally:
            self._scope.folder = outer

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        relative = _read_path(remote_file_path)
        self._contain(relative)
        with _mlflow_errors():
            inside = self._inside_archive(relative)
            if inside is not None and (inside[1] or self._archive is not None):
                model_dir, within, _ = inside
                _copy_out(model_dir, within, local_path, self._describe(relative))
                return
            if self._is_plain_file(relative):
                if self._artifact_dir is not None:
                    shutil.copyfile(self._full(relative), local_path)
                    return
                with remote_errors(self._root, "read"):
                    self._root.fs.get_file(self._full(relative), local_path)
                return
            for folder, model_dir in self._packed_above(relative):
                within = _relative_to(relative, folder)
                if (model_dir / within).is_file():
                    _copy_out(model_dir, within, local_path, self._describe(relative))
                    return
        raise self._no_such_artifact(relative)

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        """Delete a file or folder (packed models in it included) or a whole archive. In a
        local store a symbolic link is removed itself, never what it leads to."""
        relative = _read_path(artifact_path)
        self._contain(posixpath.dirname(relative))
        with _mlflow_errors():
            if self._archive is not None:
                location, within = self._archive
                if within or relative:
                    raise UnsupportedError(f"{self._describe(relative)} is inside an archive, "
                                           "which is only deleted whole; delete the archive")
                self._remove(location.path, location)
                return
            full = self._full(relative)
            if self._artifact_dir is not None:
                if _remove_local(full):
                    self._models.clear()
                    return
            elif self._exists(full):
                self._remove(full, self._root)
                return
            if any(True for _ in self._packed_above(relative)):
                raise UnsupportedError(
                    f"{self._describe(relative)} is part of a model stored as one archive; "
                    "delete the model's whole folder"
                )

    def get_local_path(self, artifact_path: str) -> str | None:
        """The file itself when it is a plain file of a local store (the tracking server then
        sends it without a copy); ``None`` for anything read from an archive or a remote
        store; MLflow's "No such artifact" error for what is in neither."""
        relative = _read_path(artifact_path)
        if self._artifact_dir is None:
            return None
        self._contain(relative)
        with _mlflow_errors():
            direct = self._direct_local(relative)
            if direct is not None and os.path.isfile(direct):
                return direct
            if direct is not None or self._found_anywhere(relative):
                return None
        raise self._no_such_artifact(relative)

    # ------------------------------------------------------------------ a local store's paths

    def _contain(self, relative: str) -> None:
        """In a local store, refuse (with MLflow's own error) a path that, or any of whose
        folders, resolves outside the store through a symbolic link. Elsewhere nothing to do:
        object stores have no links.

        MLflow's client roots a repository at the parent of a URI's last name, so
        ``runs:/<id>/leak/secret.txt`` gives a repository rooted at ``.../artifacts/leak``:
        below the run's (or logged model's) ``artifacts`` folder, the root's own folders
        must stay inside that folder too."""
        if self._artifact_dir is None:
            return
        if self._artifacts_folder is not None:
            below = Path(self._artifact_dir).relative_to(self._artifacts_folder).parts
            for index in range(1, len(below) + 1):
                validate_path_within_directory(
                    self._artifacts_folder, os.path.join(self._artifacts_folder, *below[:index]))
        if not relative:
            return
        parts = relative.split("/")
        for index in range(1, len(parts) + 1):
            validate_path_within_directory(self._artifact_dir,
                                           os.path.join(self._artifact_dir, *parts[:index]))

    def _inside_store(self, relative: str) -> bool:
        try:
            self._contain(relative)
        except MlflowException:
            return False
        return True

    def _inside_folder(self, relative: str, folder: str | None) -> bool:
        """Whether ``relative`` resolves inside the store and, given ``folder``, inside it."""
        if not self._inside_store(relative):
            return False
        if not folder:
            return True
        return Path(self._full(relative)).resolve().is_relative_to(
            Path(self._full(folder)).resolve())

    def _direct_local(self, relative: str) -> str | None:
        """The local path of ``relative`` when reading it there gives exactly what the store
        holds: a plain file, or a folder with no packed model in, above or below it and no
        link below it that leads out of that folder. None otherwise."""
        if self._inside_archive(relative) is not None:
            return None  # an archive read as the model inside it, or a path in one
        full = os.path.abspath(self._full(relative))
        name = posixpath.basename(relative)
        if os.path.isfile(full):
            hidden = name == PACKED_NAME or name.startswith(UPLOADING_PREFIX)
            return None if hidden or PARTIAL_NAME.match(name) else full
        if not os.path.isdir(full):
            return None
        parts = relative.split("/") if relative else []
        if any(os.path.isfile(os.path.join(self._full("/".join(parts[:index])), PACKED_NAME))
               for index in range(len(parts))):
            return None
        for top, folders, files in os.walk(full):
            if PACKED_NAME in files:
                return None
            for entry in (*folders, *files):
                path = os.path.join(top, entry)
                if os.path.islink(path) and not self._inside_folder(
                        os.path.relpath(path, self._artifact_dir).replace(os.sep, "/"),
                        relative):
                    return None
        return full

    def _found_anywhere(self, relative: str) -> bool:
        """Whether ``relative`` names anything the store holds, packed or plain."""
        if not relative or os.path.lexists(self._full(relative)):
            return True
        inside = self._inside_archive(relative)
        if inside is not None:
            model_dir, within, _ = inside
            return (model_dir / within).exists()
        return any((model_dir / _relative_to(relative, folder)).exists()
                   for folder, model_dir in self._packed_above(relative))

    def _no_such_artifact(self, relative: str) -> MlflowException:
        return MlflowException(f"No such artifact: '{relative}' in {self._describe('')}",
                               RESOURCE_DOES_NOT_EXIST)

    def _write_to_destination_path(self, name: str, writer: Callable[[BinaryIO], None],
                                   folder: str,
                                   finalize: Callable[[str], None] | None = None) -> None:
        """Write a file of a local store as MLflow's local repository does: into a hidden
        ``.artifact.uploading.`` file in the destination folder, renamed into place only once
        complete (and removed otherwise), so no reader ever sees part of it."""
        self._contain(_join(folder, name))
        directory = self._full(folder)
        os.makedirs(directory, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=UPLOADING_PREFIX)
        published = False
        try:
            handle = os.fdopen(descriptor, "wb")
            descriptor = None
            with handle:
                writer(handle)
            if finalize is not None:
                finalize(temporary)
            os.replace(temporary, os.path.join(directory, name))
            published = True
        finally:
            if descriptor is not None:
                os.close(descriptor)
            if not published:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(temporary)

    # ------------------------------------------------------------------ reading archives

    def _archive_of_root(self) -> tuple[Location, str] | None:
        """The archive the root is (or is in), and the path within it; None for a store.

        A root whose own name is an archive name is an archive even before it exists, so
        that ``log_artifacts`` can write it."""
        path = self._root.path.rstrip("/")
        parts = path.split("/")
        for index, part in enumerate(parts):
            if not is_archive_name(part) or part == PACKED_NAME:
                continue
            prefix = "/".join(parts[:index + 1])
            last = index == len(parts) - 1
            if self._is_file(prefix) or (last and not self._is_dir(prefix)):
                return self._at(prefix), "/".join(parts[index + 1:])
        return None

    def _inside_archive(self, relative: str) -> tuple[Path, str, str] | None:
        """For a path that reads from inside an archive: the extracted model folder, the
        path within it, and the path as listings show it; None for a store path."""
        if self._archive is not None:
            location, within = self._archive
            return self._model_of(location, required=True), _join(within, relative), relative
        parts = relative.split("/") if relative else []
        for index, part in enumerate(parts):
            if not is_archive_name(part) or part == PACKED_NAME:
                continue
            prefix = "/".join(parts[:index + 1])
            if self._is_file(self._full(prefix)):
                model_dir = self._model_of(self._at(self._full(prefix)), required=False)
                if model_dir is None:
                    return None  # a plain file named like an archive, stored as it came
                return model_dir, "/".join(parts[index + 1:]), relative
            if not self._exists(self._full(prefix)) and index == len(parts) - 1:
                raise SourceNotFoundError(f"{self._describe(prefix)} does not exist; check the "
                                          "archive's path")
        return None

    def _model_of(self, location: Location, *, required: bool) -> Path | None:
        """The model inside the archive at ``location``, extracted and verified once per
        version of the archive. Without ``required``, a file that is no model archive
        (plain data named ``.zip``, say, or one the safe reader refuses to extract) gives
        None, and its bytes stay readable as a plain file; an archive whose checksums fail
        is an error either way."""
        with self._lock:
            with remote_errors(location, "read"):
                if not location.fs.exists(location.path):
                    raise SourceNotFoundError(f"{_shown(location)} does not exist; check the "
                                              "archive's path")
                key = (location.path, str(location.fs.ukey(location.path)))
            if key in self._models:
                return self._models[key]
            target = self._scratch_dir() / f"model-{len(self._models)}"
            try:
                model_dir: Path | None = materialize(location, target)
            except IntegrityError:
                raise  # it claims to be a model archive and fails its checksums
            except ArchiveError as exc:
                if required:
                    raise
                _logger.warning("%s is not a model archive (%s); it reads as a plain file",
                                _shown(location), exc)
                model_dir = None
            self._models[key] = model_dir
            return model_dir

    def _scratch_dir(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="mlflow-archive-repo-"))
            weakref.finalize(self, shutil.rmtree, str(self._scratch), True)
        return self._scratch

    # ------------------------------------------------------------------ the store

    def _list_store(self, relative: str) -> list[FileInfo]:
        found: dict[str, FileInfo] = {}
        for folder, model_dir in reversed(list(self._packed_above(relative, include_self=True))):
            within = _relative_to(relative, folder)
            if (model_dir / within).is_dir():
                for info in _list_local(model_dir, within, relative):
                    found[info.path] = info
        if self._artifact_dir is not None:
            if os.path.isfile(self._full(relative)):
                return []  # ``relative`` is a file
            for name, is_dir, size in self._local_entries(relative):
                path = _join(relative, name)
                found[path] = FileInfo(path, is_dir, size)
            return sorted(found.values(), key=lambda info: info.path)
        full = self._full(relative)
        with remote_errors(self._root, "read"):
            try:
                entries = self._root.fs.ls(full, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                entries = []
        for entry in entries:
            name = posixpath.basename(str(entry["name"]).rstrip("/"))
            if _hidden(name) or name in (".", ".."):
                continue
            if str(entry["name"]).rstrip("/") == full.rstrip("/"):
                return []  # ``relative`` is a file
            is_dir = entry.get("type") == "directory"
            path = _join(relative, name)
            found[path] = FileInfo(path, is_dir, None if is_dir else int(entry.get("size") or 0))
        return sorted(found.values(), key=lambda info: info.path)

    def _local_entries(self, relative: str) -> Iterator[tuple[str, bool, int | None]]:
        """(name, is folder, size) of what a local store's folder holds; a link that leads
        out of the store, or out of the folder being downloaded, is left out, unread."""
        try:
            scanner = os.scandir(self._full(relative))
        except (FileNotFoundError, NotADirectoryError):
            return
        with scanner:
            for entry in sorted(scanner, key=lambda e: e.name):
                if _hidden(entry.name):
                    continue
                if entry.is_symlink() and not self._inside_folder(
                        _join(relative, entry.name), getattr(self._scope, "folder", None)):
                    _logger.warning("not listing %s: it is a symbolic link that leads out of "
                                    "what is read", self._describe(_join(relative, entry.name)))
                    continue
                try:
                    is_dir = entry.is_dir()
                    size = None if is_dir else entry.stat().st_size
                except OSError:
                    continue  # a link to nothing: nothing to list or download
                yield entry.name, is_dir, size

    def _packed_above(self, relative: str, include_self: bool = False
                      ) -> Iterator[tuple[str, Path]]:
        """(folder, extracted model) of each packed model whose folder holds ``relative``,
        the deepest first."""
        parts = relative.split("/") if relative else []
        depth = len(parts) if include_self else len(parts) - 1
        for index in range(depth, -1, -1):
            folder = "/".join(parts[:index])
            packed = self._at(self._full(_join(folder, PACKED_NAME)))
            if self._is_file(packed.path):
                self._contain(_join(folder, PACKED_NAME))
                model_dir = self._model_of(packed, required=True)
                if model_dir is not None:
                    yield folder, model_dir

    def _store_folder(self, local: Path, relative: str) -> None:
        """Pack each model directory under ``local`` (topmost ones), upload the rest."""
        models = _model_dirs(local)
        for model in models:
            inside = model.relative_to(local).as_posix()
            self._pack(model, _join(relative, "" if inside == "." else inside))
        for path in sorted(local.rglob("*")):
            if any(model == path or model in path.parents for model in models):
                continue
            target = _join(relative, path.relative_to(local).as_posix())
            if path.is_file():
                self._put_plain(path, target)
            elif path.is_dir() and self._artifact_dir is not None:
                # Folders are kept, empty ones too, as MLflow's local repository keeps them.
                self._contain(target)
                os.makedirs(self._full(target), exist_ok=True)

    def _pack(self, model: Path, folder: str) -> None:
        """Store ``model`` as the archive object of ``folder``, merged with what a model
        packed there before held, then drop plain files it now holds newer copies of."""
        self._contain(_join(folder, PACKED_NAME))
        packed = self._at(self._full(_join(folder, PACKED_NAME)))
        with tempfile.TemporaryDirectory(prefix="mlflow-archive-pack-") as scratch:
            source = model
            if self._is_file(packed.path):
                source = Path(scratch, "merged")
                shutil.copytree(self._model_of(packed, required=True), source)
                shutil.copytree(model, source, dirs_exist_ok=True)
            try:
                write_model_folder(source, packed, force=True, name=_model_name(source))
            except UnsupportedError as exc:
                # A model whose file names cannot go into an archive is still logged.
                _logger.warning("storing %s file by file: %s", self._describe(folder), exc)
                for path in sorted(model.rglob("*")):
                    if path.is_file():
                        self._put_plain(path, _join(folder, path.relative_to(model).as_posix()))
                return
        self._models = {key: value for key, value in self._models.items()
                        if key[0] != packed.path}
        self._drop_shadowed(model, folder)

    def _drop_shadowed(self, model: Path, folder: str) -> None:
        if self._artifact_dir is not None:
            for path in sorted(model.rglob("*")):
                candidate = _join(folder, path.relative_to(model).as_posix())
                if path.is_file() and self._inside_store(candidate):
                    local = self._full(candidate)
                    if os.path.islink(local) or os.path.isfile(local):
                        os.remove(local)  # a link goes, never what it leads to
            return
        full = self._full(folder)
        with remote_errors(self._root, "write"):
            try:
                existing = set(self._root.fs.find(full))
            except FileNotFoundError:
                return
            for path in sorted(model.rglob("*")):
                if path.is_file():
                    candidate = _join(full, path.relative_to(model).as_posix())
                    if candidate in existing:
                        self._root.fs.rm(candidate)

    def _put_plain(self, local: Path, relative: str, *, keep_stat: bool = False) -> None:
        """Store the file ``local`` at ``relative``; with ``keep_stat`` its times and mode go
        along (``log_artifact``), else it gets a new file's mode (``log_artifacts``)."""
        with local.open("rb") as source:
            self._put_stream(source, relative, (lambda temporary: shutil.copystat(
                local, temporary)) if keep_stat else _set_default_mode)

    def _put_stream(self, source: BinaryIO, relative: str,
                    finalize: Callable[[str], None] | None) -> None:
        if not relative:
            raise ArchiveError("give the file a name inside the store")
        if posixpath.basename(relative) == PACKED_NAME:
            raise UnsupportedError(f"{PACKED_NAME} is the name this store keeps packed models "
                                   "under; rename the file")
        _check_file_name(posixpath.basename(relative))
        if self._artifact_dir is not None:
            folder, name = posixpath.split(relative)
            self._write_to_destination_path(
                name, lambda sink: shutil.copyfileobj(source, sink, _COPY_BLOCK), folder,
                finalize)
            return
        target = self._at(self._full(relative))
        with publish_file(target, force=True) as sink:
            shutil.copyfileobj(source, sink, _COPY_BLOCK)

    def _write_archive(self, local: Path, location: Location) -> None:
        if not (local / MLMODEL).is_file():
            raise UnsupportedError(
                f"{local} holds no {MLMODEL} file, so it is no MLflow model; an archive holds "
                "one model: log the model's own folder"
            )
        name = posixpath.basename(location.path)
        if self._exists(location.path):
            raise DestinationExistsError(
                f"{_shown(location)} already exists, and an archive is never overwritten; "
                "delete it first or log the model to a new archive name"
            )
        write_model_folder(local, location, force=False, name=archive_stem(name))
        self._models.clear()

    def _refuse_inside_archive(self, relative: str, action: str) -> None:
        """Files cannot be added to an archive that exists: it is written whole, checksummed."""
        if self._archive is not None:
            raise UnsupportedError(
                f"cannot {action} {self._describe(relative)}: the archive is written whole; "
                "log a model folder to a new archive name instead"
            )
        parts = relative.split("/") if relative else []
        for index, part in enumerate(parts):
            prefix = "/".join(parts[:index + 1])
            if is_archive_name(part) and self._is_file(self._full(prefix)):
                raise UnsupportedError(
                    f"cannot {action} {self._describe(relative)}: {part} is an archive, "
                    "written whole; choose a path outside it"
                )

    # ------------------------------------------------------------------ file system helpers

    def _full(self, relative: str) -> str:
        return _join(self._root.path.rstrip("/"), relative) if relative else self._root.path

    def _at(self, path: str) -> Location:
        """``path`` on the root's file system, named in messages by its ``archive+`` URI."""
        return Location(_url_for(self._root, path), self._root.fs, path, self._root.secrets)

    def _is_plain_file(self, relative: str) -> bool:
        return bool(relative) and self._is_file(self._full(relative))

    def _is_file(self, path: str) -> bool:
        with remote_errors(self._root, "reach"):
            try:
                return bool(self._root.fs.isfile(path))
            except FileNotFoundError:
                return False

    def _is_dir(self, path: str) -> bool:
        with remote_errors(self._root, "reach"):
            try:
                return bool(self._root.fs.isdir(path))
            except FileNotFoundError:
                return False

    def _exists(self, path: str) -> bool:
        with remote_errors(self._root, "reach"):
            return bool(self._root.fs.exists(path))

    def _remove(self, path: str, location: Location) -> None:
        with remote_errors(location, "write"):
            if location.fs.exists(path):
                location.fs.rm(path, recursive=True)
        self._models.clear()

    def _forget_listings(self) -> None:
        """Another process (a client, a server) may have written since: object stores'
        cached listings would hide that."""
        if not self._root.is_local:
            self._root.fs.invalidate_cache()

    def _describe(self, relative: str) -> str:
        """The URI of ``relative`` as a user wrote it (MLflow turns ``x:///p`` into ``x:/p``)."""
        uri = self.artifact_uri.rstrip("/")
        scheme, _, rest = uri.partition(":")
        if rest.startswith("/") and not rest.startswith("//"):
            uri = f"{scheme}://{rest}"
        return _join(uri, relative) if relative else uri


@contextlib.contextmanager
def _mlflow_errors(*, os_errors: bool = True) -> Iterator[None]:
    """Turn the plugin's one-line errors into MLflow's own error type, with a code MLflow maps
    to a status (not found, already exists, bad input); ``os_errors`` says whether failures
    of the file system are turned too."""
    try:
        yield
    except MlflowException:
        raise
    except SourceNotFoundError as exc:
        raise MlflowException(str(exc), RESOURCE_DOES_NOT_EXIST) from exc
    except DestinationExistsError as exc:
        raise MlflowException(str(exc), RESOURCE_ALREADY_EXISTS) from exc
    except ArchiveError as exc:
        raise MlflowException(str(exc), INVALID_PARAMETER_VALUE) from exc
    except OSError as exc:
        if not os_errors:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        raise MlflowException(f"{exc.strerror or exc}{where}") from exc


# ---------------------------------------------------------------------- writing archives


def _model_dirs(local: Path) -> list[Path]:
    """The topmost folders under ``local`` (itself included) that hold an MLmodel file."""
    found: list[Path] = []
    for mlmodel in sorted(local.rglob(MLMODEL), key=lambda p: len(p.parts)):
        folder = mlmodel.parent
        if mlmodel.is_file() and not any(model == folder or model in folder.parents
                                         for model in found):
            found.append(folder)
    return found


def _model_name(model_dir: Path) -> str:
    from mlflow_archive_plugin.mlflow_side.source import read_mlmodel_file

    try:
        mlmodel = read_mlmodel_file(model_dir / MLMODEL)
    except (OSError, ArchiveError):
        return "model"  # writing the archive then says what is wrong with it
    return str(mlmodel.get("name") or mlmodel.get("artifact_path") or "model")


# ---------------------------------------------------------------------- small helpers


def _write_path(path: str | None) -> str:
    """A folder to write into, given by a caller: MLflow's own check ("Invalid artifact
    path" for ``/``, absolute paths, ``.``, ``..``), then in POSIX form."""
    verify_artifact_path(path)
    return _clean(path)


def _read_path(path: str | None) -> str:
    """A path to read, list or delete, given by a caller: MLflow's own check ("Invalid path"
    for absolute paths and ``..``), then in POSIX form."""
    if path:
        validate_path_is_safe(str(path))
    return _clean(path)


def _check_file_name(name: str) -> None:
    if name.startswith(UPLOADING_PREFIX):
        raise MlflowException(
            f"Invalid artifact file name {name!r}: Artifact names starting with "
            f"{UPLOADING_PREFIX!r} are reserved for files being written; rename the file",
            INVALID_PARAMETER_VALUE,
        )


def _hidden(name: str) -> bool:
    """Names a listing never shows: the packed model and files still being written."""
    return (not name or name == PACKED_NAME or name.startswith(UPLOADING_PREFIX)
            or bool(PARTIAL_NAME.match(name)))


_UMASK_LOCK = threading.Lock()


def _set_default_mode(path: str) -> None:
    """Give a file the mode ``open`` would have given it (the staging file has 0o600)."""
    if os.name == "nt":
        return
    with _UMASK_LOCK:
        umask = os.umask(0)
        os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _remove_local(path: str) -> bool:
    """Remove a file, folder or link of a local store; a link is removed itself and a folder's
    links too (``shutil.rmtree`` never follows them). Whether anything was there."""
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
        return True
    if os.path.isdir(path):
        shutil.rmtree(path)
        return True
    return False


def _clean(path: str | None) -> str:
    """A relative artifact path in POSIX form; ``..`` and absolute paths are refused."""
    if not path:
        return ""
    text = str(path).replace("\\", "/").strip("/")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise MlflowException(f"artifact path {path!r} leaves the repository; use a path "
                              "inside it", INVALID_PARAMETER_VALUE)
    return "/".join(parts)


def _join(head: str, tail: str) -> str:
    if not head:
        return tail
    if not tail:
        return head
    return f"{head.rstrip('/')}/{tail}"


def _relative_to(path: str, folder: str) -> str:
    return path[len(folder):].lstrip("/") if folder else path


def _url_for(root: Location, path: str) -> str:
    """The ``archive+`` URI of ``path`` (under the root, or one of its parents) as messages
    show it: built from the root's URL, since some file systems' paths omit the host."""
    base, url = root.path.rstrip("/"), root.url.rstrip("/")
    if path.startswith(base):
        shown = url + path[len(base):]
    elif base.startswith(path) and url.endswith(base[len(path):]):
        shown = url[:len(url) - len(base) + len(path)]
    else:
        shown = path
    return PREFIX + ("file://" if root.is_local else "") + shown


def _shown(location: Location) -> str:
    """How messages name a location: its ``archive+`` URI where the repository built it."""
    return location.url


def _within(model_dir: Path, within: str) -> Path:
    """``model_dir/within``, refused if a link would lead it out of the extracted model (the
    safe reader writes none; this holds even if one were there)."""
    path = model_dir / within if within else model_dir
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise UnsafeArchiveError(f"{within} leads out of the archive's files; it is not read")
    return path


def _list_local(model_dir: Path, within: str, shown: str) -> list[FileInfo]:
    """FileInfos of ``model_dir/within``'s children, with paths under ``shown``."""
    folder = _within(model_dir, within)
    if not folder.is_dir():
        return []  # a file, or nothing: MLflow's contract lists neither
    infos = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name):
        if child.is_symlink() and not child.resolve().is_relative_to(model_dir.resolve()):
            continue
        is_dir = child.is_dir()
        infos.append(FileInfo(_join(shown, child.name), is_dir,
                              None if is_dir else child.stat().st_size))
    return infos


def _copy_out(model_dir: Path, within: str, local_path: str, shown: str) -> None:
    source = _within(model_dir, within)
    if not within or not source.is_file():
        raise SourceNotFoundError(f"{shown} does not exist in the archive")
    shutil.copyfile(source, local_path)


# The URI rules live in artifact_uris; their names stay importable from here too.
__all__ = ["PACKED_NAME", "PREFIX", "S3_ENDPOINT_VARIABLE", "STORAGE_OPTIONS_VARIABLE",
           "ArchiveArtifactRepository", "enforce_host_policy", "inner_url", "storage_options"]
