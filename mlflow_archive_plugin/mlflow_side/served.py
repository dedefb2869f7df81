"""Model files behind an MLflow server's artifact proxy, read once, straight into an archive.

``mlflow artifacts download`` writes every file to disk and the archive writer then reads it
back. Here small files (the documents layouts read: ``MLmodel``, requirements, examples) are
downloaded, and each large file gets a placeholder of its size whose bytes the archive writer
streams from the server when it reaches that entry: the download, the hash and the write
happen in one pass, and no second copy of the weights ever touches the disk.

Only what MLflow's HTTP artifact repository serves (``mlflow-artifacts:`` and ``http(s)``
artifact URIs) is streamed; other stores are downloaded by MLflow as before.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import ArchiveError, CorruptArchiveError
from mlflow_archive_plugin.storage.extents import (
    Extent,
    UploadBody,
    make_placeholder,
    stays_in_place,
)
from mlflow_archive_plugin.storage.integrity import CHUNK_SIZE

_DOWNLOAD_THREADS = 4


class ServedFile:
    """A model file on the server: what the archive writer opens in place of its placeholder.

    Quacks like the :class:`~pathlib.Path` writers are given (``stat()`` and ``open()``).
    """

    def __init__(self, repo: Any, path: str, size: int | None, label: str) -> None:
        self._repo = repo
        self.path = path
        self.size = size
        self.label = label
        self._mtime = time.time()

    def stat(self) -> os.stat_result:
        """A regular file's status with the size the server listed."""
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, self.size or 0, self._mtime,
                               self._mtime, self._mtime))

    def open(self, mode: str = "rb") -> _ServedStream:
        """The file's bytes as the server sends them, checked against the listed size."""
        if mode != "rb":
            raise ValueError(f"a served file opens only for reading, not {mode!r}")
        from mlflow.utils.rest_utils import augmented_raise_for_status, http_request

        with _served_errors(self.label):
            response = http_request(self._repo._host_creds, posixpath.join("/", self.path), "GET",
                                    stream=True)
            augmented_raise_for_status(response)
        return _ServedStream(response, self.label, self.size)

    def download_to(self, dst: Path) -> None:
        """Write the file's bytes to ``dst`` (replacing a placeholder)."""
        with self.open() as source, open(dst, "wb") as sink:
            shutil.copyfileobj(source, sink, CHUNK_SIZE)


class _ServedStream:
    """An HTTP response body read in the sizes asked for; a dropped connection or a body of
    the wrong length is one :class:`ArchiveError` naming the file."""

    def __init__(self, response: Any, label: str, size: int | None) -> None:
        self._response = response
        self._label = label
        self._expected = size
        self._seen = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left with -1); ``b""`` at the end."""
        with _served_errors(self._label):
            data = self._response.raw.read(None if size < 0 else size, decode_content=True)
        self._seen += len(data)
        expected = self._expected
        if expected is not None and (self._seen > expected
                                     or (not data and size != 0 and self._seen != expected)):
            raise CorruptArchiveError(
                f"{self._label}: the server sent {self._seen} bytes but listed "
                f"{self._expected}; the model changed while it was exported, retry"
            )
        return data

    def close(self) -> None:
        """Release the connection."""
        self._response.close()

    def __enter__(self) -> _ServedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def _served_errors(label: str, action: str = "read {} from") -> Iterator[None]:
    """Turn a transport failure (refused, reset, timed out) into one line naming the file."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ArchiveError:
        raise
    except (RequestException, HTTPError, MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchiveError(f"cannot {action.format(label)} the server: {first}") from exc


def stream_from_server(files_uri: str, download_dir: Path, tracking_uri: str,
                       registry_uri: str) -> dict[Path, ServedFile] | None:
    """Fetch the model at ``files_uri`` into ``download_dir``, large files as placeholders.

    Returns each placeholder's path with the :class:`ServedFile` to stream it from, or None
    when ``files_uri`` is not served by an MLflow server's artifact proxy (then nothing was
    fetched, and MLflow's own download applies).
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with _served_errors(files_uri):
        repo = get_artifact_repository(files_uri, tracking_uri=tracking_uri,
                                       registry_uri=registry_uri)
    if not _is_proxied(repo):
        return None
    with _served_errors(files_uri):
        listed = _list_files(repo, None)
    deferred: dict[Path, ServedFile] = {}  # by resolved path, as the writer looks them up
    small: list[tuple[ServedFile, Path]] = []
    root = download_dir.resolve()
    for rel, size in listed:
        local = (root / rel).resolve()
        if root not in local.parents:
            raise CorruptArchiveError(f"the server listed a model file outside the model: "
                                      f"{rel!r}")
        local.parent.mkdir(parents=True, exist_ok=True)
        served = ServedFile(repo, rel, size, rel)
        if size is not None and stays_in_place(rel, size):
            make_placeholder(local, size)
            deferred[local] = served
        else:
            small.append((served, local))
    with ThreadPoolExecutor(_DOWNLOAD_THREADS, thread_name_prefix="mlflow-archive-get") as pool:
        for done in [pool.submit(served.download_to, local) for served, local in small]:
            done.result()
    return deferred


def _list_files(repo: Any, path: str | None) -> list[tuple[str, int | None]]:
    """Every file below ``path`` with its listed size, depth first, sorted."""
    files = []
    for info in repo.list_artifacts(path):
        if info.is_dir:
            files += _list_files(repo, info.path)
        else:
            files.append((info.path, info.file_size))
    return files


def fetch_deferred(deferred: dict[Path, ServedFile]) -> None:
    """Download every streamed file into its placeholder, for work that reads model files
    outside the archive writer (signing, encrypting, copying a stored archive)."""
    for local, served in list(deferred.items()):
        served.download_to(local)
        del deferred[local]


def _is_proxied(repo: Any) -> bool:
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    return isinstance(repo, HttpArtifactRepository)


def proxied_repository(client: Any, model_id: str) -> Any | None:
    """The artifact repository of logged model ``model_id`` when a server's artifact proxy
    serves it (so files can be sent from any stream), else None."""
    try:
        repo = client._tracking_client._get_artifact_repo(model_id, resource="logged_model")
    except AttributeError:  # a future MLflow without this helper: let MLflow upload
        return None
    if not _is_proxied(repo):
        return None
    from mlflow.environment_variables import MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD

    return None if MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD.get() else repo


def upload_through_proxy(repo: Any, model_dir: Path, extents: dict[Path, Extent]) -> None:
    """Upload every file of ``model_dir`` as ``repo.log_artifacts`` would; a file left in
    its archive (``extents``) is sent straight from there, hashed again as it goes."""
    from mlflow.utils.mime_type_utils import _guess_mime_type
    from mlflow.utils.rest_utils import augmented_raise_for_status, http_request

    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        folder = posixpath.dirname(relative) or None
        extent = extents.get(path.resolve())
        if extent is None:
            repo.log_artifact(str(path), folder)
            continue
        body = UploadBody(extent, relative)
        try:
            with _served_errors(relative, "upload {} to"):
                response = http_request(
                    repo._host_creds, posixpath.join("/", relative), "PUT", data=body,
                    extra_headers={"Content-Type": _guess_mime_type(path.name)},
                )
                augmented_raise_for_status(response)
        except ArchiveError:
            if body.error is not None:  # MLflow wraps what the body raised; say it plainly
                raise body.error from None
            raise
        finally:
            body.close()
