"""Where archives live: any fsspec URL or local path, read safely and published atomically.

An archive appears under its final name only when it is complete: local files and folders are
written under a hidden temporary name in the same directory and renamed; remote files are built
in a local temporary file and uploaded in one piece (object stores commit an upload only when it
finishes), to a temporary name first where the file system can rename. A large file goes to S3
as a multipart upload whose parts are sent several at a time: ``multipart_chunksize`` (bytes, a
storage option of this plugin, 8 MiB by default as in the AWS CLI) sets the part size and
s3fs's own ``max_concurrency`` storage option how many go at once (4 unless given), so memory
holds at most that many parts; a failed upload is aborted, and until it completes nothing is
visible at the key.

Credentials come from where each file system looks for them (environment, its configuration
files, ``storage_options``), never from an archive. Whatever a remote file system raises
(unreachable host, refused credentials, missing bucket) becomes a one-line
:class:`~mlflow_archive_plugin.errors.ArchiveError` naming the location, with any password or
secret it was given masked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import posixpath
import re
import shutil
import socket
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from mlflow_archive_plugin.errors import (
    ArchiveError,
    DestinationExistsError,
    NotAnArchiveError,
    SourceNotFoundError,
    UnsupportedError,
)
from mlflow_archive_plugin.storage.containers import detect_container

# Object stores make an upload visible only once it has completed, so no rename is needed.
_ATOMIC_UPLOAD_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}
# Read-only locations; many HTTP servers also ignore range requests, so an archive there is
# read into a local temporary file (in blocks, never whole in memory) before it is opened.
_READ_ONLY_PROTOCOLS = {"http", "https"}
_SPOOLED_PROTOCOLS = _READ_ONLY_PROTOCOLS
# Names whose values are secrets: storage options here, and the query (or fragment) parameters
# that ``redact_uri`` removes from URIs (``X-Amz-Signature``, ``X-Amz-Credential``,
# ``X-Amz-Security-Token``, an Azure SAS ``sig``, ``access_token``, ``apiKey`` ...). A name is
# split into words (at case changes and at anything not a letter or digit) and is secret when
# a word is one of these or ends in one of the last few; ``author`` or ``design`` are not.
_SECRET_WORDS = frozenset({
    "secret", "password", "passwd", "pass", "pwd", "token", "key", "credential", "credentials",
    "auth", "authorization", "sig", "signature", "session", "jwt", "bearer", "cookie", "sas",
    "passphrase",
})
_SECRET_ENDINGS = ("token", "key", "secret", "password", "passwd", "signature", "credential")
# A URI inside free text (a tag, a description, a YAML scalar): a scheme, then a slash.
_URI_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,31}:/[^\s\"'<>`]*")
# Credentials that SDKs read from the environment, masked in messages all the same.
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_KEY",
                     "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                     "AZURE_STORAGE_CONNECTION_STRING")
# S3 multipart uploads: the part size unless the storage option says otherwise, S3's smallest
# part and its largest number of parts (a bigger file gets bigger parts).
_PART_SIZE_OPTION = "multipart_chunksize"
_DEFAULT_PART_BYTES = 8 * 1024**2
_MIN_PART_BYTES = 5 * 1024**2
_MAX_PARTS = 10_000
_MULTIPART_PROTOCOLS = {"s3", "s3a"}
# Parts in flight unless max_concurrency says otherwise: s3fs's 10 would hold 80 MiB of parts.
_DEFAULT_PARTS_AT_ONCE = 4
_CREDENTIALS_HINT = ("check the credentials (environment, the file system's configuration, "
                     "or storage options such as --storage-option key=... secret=...)")


@dataclass(frozen=True)
class Location:
    """A resolved location: the URL as given (any password masked), its file system and the
    path within it. ``secrets`` are strings never to be shown in a message; ``part_size`` is
    the multipart upload part size asked for, if any."""

    url: str
    fs: Any
    path: str
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)
    part_size: int | None = field(default=None, compare=False)

    @property
    def is_local(self) -> bool:
        """Whether the location is on the local file system."""
        return isinstance(self.fs, LocalFileSystem)

    @property
    def protocol(self) -> str:
        """The file system's protocol (``file``, ``s3``, ``memory`` ...)."""
        protocol = self.fs.protocol
        return protocol if isinstance(protocol, str) else protocol[0]

    def child(self, name: str) -> Location:
        """The location of ``name`` inside this one, used as a folder."""
        joined = f"{self.path.rstrip('/')}/{name}"
        url = joined if self.is_local else f"{self.url.rstrip('/')}/{name}"
        return dataclasses.replace(self, url=url, path=joined)

    def scrub(self, text: str) -> str:
        """``text`` with every secret this location was given masked."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def resolve(url: str | os.PathLike, storage_options: dict | None = None) -> Location:
    """Resolve a local path or fsspec URL; an unknown protocol is a one-line error, and so is
    a file system that connects at once (ftp) and cannot."""
    text = os.fspath(url)
    options = dict(storage_options or {})
    shown = _mask_url(text)
    probe = Location(shown, None, text, _secrets(text, options))
    part_size = _part_size(options.pop(_PART_SIZE_OPTION, None))
    try:
        fs, path = fsspec.core.url_to_fs(text, **options)
    except (ImportError, ValueError) as exc:
        raise UnsupportedError(probe.scrub(f"cannot open {shown!r}: {_first_line(exc)}")) from exc
    except Exception as exc:  # noqa: BLE001 - whatever the file system's connection raised
        raise _failure(probe, "reach", exc) from exc
    if isinstance(fs, LocalFileSystem) and fsspec.core.split_protocol(text)[0] is None:
        path = os.path.abspath(os.path.expanduser(text))
    return Location(shown, fs, path, probe.secrets, part_size)


def _part_size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < _MIN_PART_BYTES:
        raise UnsupportedError(
            f"storage option {_PART_SIZE_OPTION}={value!r} is not a whole number of bytes of at "
            f"least {_MIN_PART_BYTES} (S3's smallest part); give e.g. "
            f"{_PART_SIZE_OPTION}={_DEFAULT_PART_BYTES}"
        )
    return value


def is_folder_target(location: Location, raw: str) -> bool:
    """Whether an export destination names a folder to put a derived file name in."""
    _refuse_read_only(location)
    if raw.endswith(("/", os.sep)):
        return True
    with remote_errors(location, "reach"):
        try:
            return bool(location.fs.isdir(location.path))
        except FileNotFoundError:
            return False


def _exists(location: Location) -> bool:
    with remote_errors(location, "reach"):
        return bool(location.fs.exists(location.path))


def refuse_existing(location: Location, force: bool) -> None:
    _refuse_read_only(location)
    if not force and _exists(location):
        raise DestinationExistsError(
            f"{location.url} already exists; pass --force (force=True) to replace it"
        )


def _refuse_read_only(location: Location) -> None:
    if location.protocol in _READ_ONLY_PROTOCOLS:
        raise UnsupportedError(
            f"{location.url} can only be read from; export to a local path or to a "
            "writable URL such as s3://, gs://, az:// or ftp://"
        )


# What a partial file's name says about the process writing it, so that whoever finds it
# after a crash can tell whether its owner is gone: ``.<name>.partial-<random>-<pid>-<start>@
# <host>``, ``start`` being the process's start time in clock ticks since boot (a reused pid
# has another), 0 where the system does not say.
PARTIAL_NAME = re.compile(r"^\.(?P<name>.+)\.partial-(?P<token>[0-9a-f]{12})"
                          r"(?:-(?P<pid>\d+)-(?P<start>\d+)@(?P<host>[A-Za-z0-9._-]+))?$")


def host_name() -> str:
    """This machine's name as partial files and temporary folders record it."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``); None when
    no such process runs, 0 when the system does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except FileNotFoundError:
        return None
    except (OSError, IndexError, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0
        return 0


def owner_tag() -> str:
    """``<pid>-<start>@<host>`` of this process, for the names of what it may leave behind."""
    pid = os.getpid()
    return f"{pid}-{process_start(pid) or 0}@{host_name()}"


def partial_name(path: str) -> str:
    """A sibling of ``path`` to write before renaming it into place, naming its owner."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.partial-{uuid.uuid4().hex[:12]}-{owner_tag()}")


def _temporary_sibling(path: str) -> str:
    return partial_name(path)


def _replace_local(tmp: str, final: str) -> None:
    """Move ``tmp`` over ``final``, which may be an existing file or folder (force)."""
    if not os.path.lexists(final):
        os.replace(tmp, final)
        return
    doomed = _temporary_sibling(final)
    os.replace(final, doomed)
    try:
        os.replace(tmp, final)
    except OSError:
        os.replace(doomed, final)
        raise
    if os.path.isdir(doomed) and not os.path.islink(doomed):
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        os.unlink(doomed)


@contextlib.contextmanager
def publish_file(location: Location, force: bool = False,
                 on_complete: Callable[[str], None] | None = None) -> Iterator[BinaryIO]:
    """A seekable binary stream whose bytes appear at ``location`` only if the block succeeds.

    ``on_complete`` is called with the local path of the finished file before it is put in
    place (renamed or uploaded): a chance to hash it without reading it back from a remote
    store, and to refuse it (an exception there publishes nothing)."""
    refuse_existing(location, force)
    if location.is_local:
        os.makedirs(os.path.dirname(location.path), exist_ok=True)
        tmp = _temporary_sibling(location.path)
        try:
            with open(tmp, "xb") as handle:
                yield handle
                _sync_and_complete(handle, tmp, on_complete)
            _replace_local(tmp, location.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with tempfile.TemporaryDirectory(prefix=f"mlflow-archive-upload-{owner_tag()}-") as scratch:
        # The final name, so that object stores guess the same content type from it.
        local = os.path.join(scratch, posixpath.basename(location.path.rstrip("/")) or "archive")
        with open(local, "wb") as handle:
            yield handle
        if on_complete is not None:
            on_complete(local)
        _upload(local, location)


def _sync_and_complete(handle: BinaryIO, path: str,
                       on_complete: Callable[[str], None] | None) -> None:
    """Flush ``handle`` to disk (so a crash after the rename cannot leave a torn file under
    the final name) while ``on_complete`` reads the finished file: the disk's flush and the
    caller's pass over the file (hashing it, from the page cache) overlap instead of
    adding up."""
    handle.flush()
    if on_complete is None:
        os.fsync(handle.fileno())
        return
    with ThreadPoolExecutor(1, thread_name_prefix="mlflow-archive-fsync") as pool:
        synced = pool.submit(os.fsync, handle.fileno())
        try:
            on_complete(path)
        finally:
            wait([synced])  # never close the file under a running fsync
        synced.result()


def _upload(local: str, location: Location) -> None:
    fs = location.fs
    with remote_errors(location, "write"):
        if location.protocol in _ATOMIC_UPLOAD_PROTOCOLS:
            fs.put_file(local, location.path, **_upload_options(location, os.path.getsize(local)))
            return
        parent = posixpath.dirname(location.path)
        if parent not in ("", "/"):
            fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".{posixpath.basename(location.path)}.partial-"
                                     f"{uuid.uuid4().hex[:12]}-{owner_tag()}")
        try:
            fs.put_file(local, tmp)
            fs.mv(tmp, location.path)
        finally:
            with contextlib.suppress(Exception):  # best effort: the upload's error matters more
                if fs.exists(tmp):
                    fs.rm(tmp)


def _upload_options(location: Location, size: int) -> dict[str, Any]:
    """What ``put_file`` is told about parts: for S3, parts of the chosen size (larger when
    the file would need more than S3's 10,000), which s3fs sends ``max_concurrency`` at a
    time once the file is at least two parts long."""
    if location.protocol not in _MULTIPART_PROTOCOLS:
        return {}
    wanted = location.part_size or _DEFAULT_PART_BYTES
    given = getattr(location.fs, "storage_options", {}).get("max_concurrency")
    return {"chunksize": max(wanted, -(-size // _MAX_PARTS)),
            "max_concurrency": given or _DEFAULT_PARTS_AT_ONCE}


@contextlib.contextmanager
def publish_folder(location: Location, force: bool = False) -> Iterator[Path]:
    """A fresh local directory that becomes ``location`` only if the block succeeds."""
    if not location.is_local:
        raise UnsupportedError(
            f"folder archives can only be written to local paths, not {location.url}; "
            "choose a file container such as zip"
        )
    refuse_existing(location, force)
    os.makedirs(os.path.dirname(location.path), exist_ok=True)
    tmp = _temporary_sibling(location.path)
    os.mkdir(tmp)
    try:
        yield Path(tmp)
        _replace_local(tmp, location.path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def open_source(location: Location) -> Iterator[tuple[str, BinaryIO | Path]]:
    """The container name and a readable source: a stream for files, a path for folders."""
    if location.is_local and os.path.isdir(location.path):
        yield "folder", Path(location.path)
        return
    with contextlib.ExitStack() as stack:
        if location.protocol in _SPOOLED_PROTOCOLS:
            handle: Any = stack.enter_context(_spooled(location))
        else:
            with remote_errors(location, "read"):
                if not location.fs.exists(location.path):
                    raise SourceNotFoundError(
                        f"{location.url} does not exist; check the path or URL"
                    )
                if location.fs.isdir(location.path):
                    raise UnsupportedError(
                        f"{location.url} is a remote folder; download it or pack it as a zip "
                        "first"
                    )
                handle = stack.enter_context(location.fs.open(location.path, "rb"))
            if not location.is_local:
                handle = _GuardedStream(handle, location)
        head = handle.read(512)
        handle.seek(0)
        try:
            container = detect_container(head)
        except NotAnArchiveError as exc:
            raise NotAnArchiveError(f"{location.url} is {exc}") from exc
        yield container, handle


@contextlib.contextmanager
def fetched(location: Location) -> Iterator[Location]:
    """``location`` itself when it is local, else a local copy of the file there (downloaded
    in blocks into a temporary folder, under the same base name) that keeps the original URL
    for messages. Reading a remote archive once, as a whole, means that what is verified is
    exactly what is kept, even if the remote object changes meanwhile, and that zip's random
    access costs no round trips."""
    if location.is_local:
        yield location
        return
    if retried(location, "read", location.fs.isdir, location.path):
        raise UnsupportedError(
            f"{location.url} is a remote folder; download it or pack it as a zip first"
        )
    with tempfile.TemporaryDirectory(prefix="mlflow-archive-download-") as scratch:
        local = os.path.join(scratch, posixpath.basename(location.path.rstrip("/")) or "archive")
        retried(location, "read", location.fs.get_file, location.path, local)
        yield Location(location.url, LocalFileSystem(), local, location.secrets)


@contextlib.contextmanager
def _spooled(location: Location) -> Iterator[BinaryIO]:
    """The file at ``location`` downloaded (streamed in blocks) into a temporary local file."""
    with tempfile.TemporaryDirectory(prefix="mlflow-archive-download-") as scratch:
        local = os.path.join(scratch, "archive")
        retried(location, "read", location.fs.get_file, location.path, local)
        with open(local, "rb") as handle:
            yield handle


class _GuardedStream:
    """A remote file whose failures mid-read (a dropped connection, an expired token) are
    one-line errors naming the location, not taken for a damaged archive."""

    def __init__(self, handle: Any, location: Location) -> None:
        self._handle = handle
        self._location = location

    def read(self, size: int = -1) -> bytes:
        with remote_errors(self._location, "read"):
            return self._handle.read(size)

    def readinto(self, buffer) -> int:
        with remote_errors(self._location, "read"):
            return self._handle.readinto(buffer)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        with remote_errors(self._location, "read"):
            return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return bool(self._handle.closed)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._handle.close()


@contextlib.contextmanager
def remote_errors(location: Location, action: str) -> Iterator[None]:
    """Turn what a file system raises inside the block into a one-line :class:`ArchiveError`
    naming ``location``: ``action`` is the verb of "cannot <action> <url>" (read, write,
    reach); a missing file while reading is a :class:`SourceNotFoundError`, a refusal of the
    credentials says so. For every call on ``location.fs`` outside this module."""
    try:
        yield
    except ArchiveError:
        raise
    except Exception as exc:  # noqa: BLE001 - each file system raises its own kinds
        raise _failure(location, action, exc) from exc


# How often a call that failed for a passing reason (a reset connection, a timeout, a 5xx or
# 429 answer) is tried in all, and the first pause between tries (doubled after each).
RETRY_ATTEMPTS = 5
RETRY_FIRST_PAUSE = 0.25
_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
                     errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}
# Exception classes of aiohttp, urllib3, http.client and botocore that mean the same.
_TRANSIENT_CLASSES = {"ClientConnectionError", "ClientPayloadError", "ServerTimeoutError",
                      "IncompleteRead", "ProtocolError", "ReadTimeoutError",
                      "EndpointConnectionError", "ConnectionClosedError", "RemoteDisconnected"}


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says a remote call failed for a reason that may pass: a dropped or
    refused connection, a timeout, a server error (5xx) or too many requests (429)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    status = getattr(exc, "status", None)
    if not isinstance(status, int):
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and (status >= 500 or status == 429):
        return True
    return any(kind.__name__ in _TRANSIENT_CLASSES for kind in type(exc).__mro__)


def retried(location: Location, action: str, call: Callable[..., Any], *args: Any,
            **kwargs: Any) -> Any:
    """``call(*args, **kwargs)`` on ``location``'s file system, tried again after a pause when
    it fails for a passing reason (:func:`is_transient`), up to ``RETRY_ATTEMPTS`` times in
    all; a lasting failure is the one-line error of :func:`remote_errors`, saying how many
    times it was tried."""
    pause = RETRY_FIRST_PAUSE
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call(*args, **kwargs)
        except ArchiveError:
            raise
        except Exception as exc:  # noqa: BLE001 - each file system raises its own kinds
            if attempt == RETRY_ATTEMPTS or not is_transient(exc):
                failure = _failure(location, action, exc)
                if attempt > 1:
                    failure = type(failure)(f"{failure} (tried {attempt} times)")
                raise failure from exc
        time.sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _failure(location: Location, action: str, exc: BaseException) -> ArchiveError:
    detail = location.scrub(_first_line(exc))
    if isinstance(exc, FileNotFoundError) and action == "read":
        return SourceNotFoundError(f"{location.url} does not exist; check the path or URL")
    if not location.is_local and (isinstance(exc, PermissionError) or _says_denied(exc)):
        return ArchiveError(f"access to {location.url} was denied ({detail}); {_CREDENTIALS_HINT}")
    return ArchiveError(f"cannot {action} {location.url}: {detail}")


def _says_denied(exc: BaseException) -> bool:
    """Credential failures that file systems raise outside PermissionError."""
    name = type(exc).__name__
    if name in {"NoCredentialsError", "PartialCredentialsError"}:  # botocore
        return True
    return name == "error_perm" and str(exc).startswith("530")  # ftplib: not logged in


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if not text or text == name:
        return name
    return text if len(text) <= 300 else text[:297] + "..."


def _mask_url(text: str) -> str:
    """``text`` with the password of a ``scheme://user:password@host`` URL masked."""
    if "://" not in text:
        return text
    try:
        parts = urllib.parse.urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    if not password:
        return text
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].rsplit(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


def is_secret_name(name: str) -> bool:
    """Whether a storage option or URI query parameter called ``name`` holds a secret (see
    ``_SECRET_WORDS``; an Azure ``connection_string`` too, which holds the account key)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name).lower())
    if "connectionstring" in "".join(words):
        return True
    return any(word in _SECRET_WORDS or word.endswith(_SECRET_ENDINGS) for word in words if word)


def redact_uri(uri: str | None) -> str | None:
    """``uri`` without its user name and password and without secret-looking query or
    fragment parameters (see ``_SECRET_WORDS``); the rest of it byte for byte, and ``uri``
    itself when there is nothing to remove. The one redaction every URI an archive records
    goes through (lineage, registry and run metadata, ``MLmodel``)."""
    if not uri or ":" not in uri:
        return uri
    rest, hashed, fragment = uri.partition("#")
    head, asked, query = rest.partition("?")
    scheme_end = head.find("://")
    if scheme_end > 0:
        start = scheme_end + 3
        authority = head[start:].split("/", 1)[0]
        head = head[:start] + authority.rsplit("@", 1)[-1] + head[start + len(authority):]
    kept_query, kept_fragment = _without_secrets(query), _without_secrets(fragment)
    if (head, kept_query, kept_fragment) == (rest.partition("?")[0], query, fragment):
        return uri  # nothing to remove: the URI exactly as given
    return (head + (f"?{kept_query}" if asked and kept_query else "")
            + (f"#{kept_fragment}" if hashed and kept_fragment else ""))


def redact_text(text: str) -> str:
    """``text`` with every URI in it (``scheme:/...`` up to white space or a quote) passed
    through ``redact_uri``; ``text`` itself when none holds a secret."""
    if ":/" not in text:
        return text
    return _URI_IN_TEXT.sub(lambda match: redact_uri(match.group(0)) or "", text)


def secret_uris(text: str) -> list[str]:
    """The URIs in ``text`` that ``redact_uri`` would change, as written there."""
    if ":/" not in text:
        return []
    return [uri for uri in _URI_IN_TEXT.findall(text) if redact_uri(uri) != uri]


def redact_data(value: Any) -> Any:
    """``value`` (parsed JSON or YAML: dicts, lists, strings ...) with ``redact_text``
    applied to every string value in it, keys left as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_data(item) for item in value]
    return value


def _without_secrets(params: str) -> str:
    """``name=value&...`` without the pairs whose name is secret; the others as written."""
    if "=" not in params:
        return params
    pieces = re.split(r"([&;])", params)
    kept: list[str] = []
    for piece in pieces[::2]:
        name = urllib.parse.unquote_plus(piece.split("=", 1)[0])
        if not is_secret_name(name):
            kept.append(piece)
    if len(kept) == len(pieces[::2]):
        return params
    return "&".join(kept)


def _secrets(text: str, options: dict) -> tuple[str, ...]:
    found = set(_secret_values(options))
    with contextlib.suppress(ValueError):
        parts = urllib.parse.urlsplit(text) if "://" in text else None
        if parts is not None and parts.password:
            found.update({parts.password, urllib.parse.unquote(parts.password)})
    found.update(os.environ[name] for name in _SECRET_VARIABLES if os.environ.get(name))
    return tuple(sorted(secret for secret in found if len(secret) >= 6))


def _secret_values(options: dict) -> Iterator[str]:
    for key, value in options.items():
        if isinstance(value, dict):
            yield from _secret_values(value)
        elif isinstance(value, str) and is_secret_name(str(key)):
            yield value
