"""What killed runs leave behind at a destination and in the temporary folder, and removing it.

An export writes ``.<name>.partial-<random>-<pid>-<start>@<host>`` beside its destination and
renames it into place when complete; it works in ``mlflow-archive-*-<pid>-<start>@<host>-*``
folders under ``TMPDIR``; on S3 it sends a multipart upload that only completing publishes. A
process killed half way leaves them. A leftover whose owner ran on this machine is stale once
that process is gone (its pid runs no more, or runs a process started at another time); one
from another machine, or named before owners were recorded, once it is older than
``older_than`` seconds. S3 keeps no owner with an upload, so an unfinished upload is stale by
age alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import posixpath
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from mlflow_archive_plugin.storage.location import (
    PARTIAL_NAME,
    Location,
    host_name,
    is_folder_target,
    process_start,
    remote_errors,
    resolve,
)

DEFAULT_OLDER_THAN = 24 * 3600.0
SCRATCH_PREFIX = "mlflow-archive-"
# ``mlflow-archive-<kind>-<pid>-<start>@<host>-<random>``, as scratch_dir names them.
_SCRATCH_NAME = re.compile(r"^mlflow-archive-[a-z]+-(?P<pid>\d+)-(?P<start>\d+)@"
                           r"(?P<host>[A-Za-z0-9._-]+)-")


@dataclass
class Leftover:
    """One thing a killed run left: where it is, what it is, and why it counts as stale."""

    url: str
    kind: str  # "partial file", "partial folder", "temporary folder", "multipart upload"
    reason: str
    upload_id: str | None = None
    location: Location | None = field(default=None, repr=False, compare=False)

    def line(self) -> str:
        return f"{self.kind} {self.url}: {self.reason}"


def owner_gone(pid: str | None, start: str | None, host: str | None) -> bool | None:
    """Whether the recorded owner has ended: True or False for an owner on this machine,
    None when that cannot be told here (another machine, or no owner recorded)."""
    if pid is None or host != host_name():
        return None
    started = process_start(int(pid))
    if started is None:
        return True
    return bool(int(start or 0)) and bool(started) and started != int(start or 0)


def _stale(pid, start, host, age: float | None, older_than: float) -> str | None:
    gone = owner_gone(pid, start, host)
    if gone:
        return f"its writer (process {pid} on {host}) is gone"
    if gone is None and age is not None and age > older_than:
        who = f"written on {host}" if host else "with no owner recorded"
        return f"{who}, untouched for {_duration(age)}"
    return None


def _duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


def find_at_destination(dest: str | os.PathLike, *, storage_options: dict | None = None,
                        older_than: float = DEFAULT_OLDER_THAN) -> list[Leftover]:
    """The stale partial files and folders, and on S3 the stale unfinished uploads, of
    exports to ``dest`` (a destination file, or a folder exported into)."""
    raw = os.fspath(dest)
    location = resolve(raw, storage_options)
    if is_folder_target(location, raw):
        return _find(location, location, None, older_than)
    return find_beside(location, older_than=older_than)


def find_beside(location: Location, *, older_than: float = DEFAULT_OLDER_THAN
                ) -> list[Leftover]:
    """The stale leftovers of exports to the file ``location`` (its partial siblings, its
    unfinished uploads): what an export removes before writing there."""
    return _find(location, _parent(location), posixpath.basename(location.path.rstrip("/")),
                 older_than)


def _find(location: Location, folder: Location, only: str | None,
          older_than: float) -> list[Leftover]:
    found: list[Leftover] = []
    now = time.time()
    with remote_errors(folder, "list"):
        entries = folder.fs.ls(folder.path, detail=True) if folder.fs.exists(folder.path) else []
    for entry in entries:
        path = entry["name"]
        match = PARTIAL_NAME.match(posixpath.basename(path.rstrip("/")))
        if match is None or (only is not None and match.group("name") != only):
            continue
        reason = _stale(match.group("pid"), match.group("start"), match.group("host"),
                        _age(entry, now), older_than)
        if reason is not None:
            kind = "partial folder" if entry.get("type") == "directory" else "partial file"
            where = folder.child(posixpath.basename(path.rstrip("/")))
            found.append(Leftover(where.url, kind, reason, location=where))
    if location.protocol in ("s3", "s3a"):
        found += _stale_uploads(location, folder, only, older_than)
    return found


def find_in_temporary(tmp_dir: str | os.PathLike | None = None, *,
                      older_than: float = DEFAULT_OLDER_THAN) -> list[Leftover]:
    """The stale working folders of this plugin in ``tmp_dir`` (default: ``TMPDIR``)."""
    root = os.fspath(tmp_dir) if tmp_dir is not None else tempfile.gettempdir()
    found: list[Leftover] = []
    now = time.time()
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as listing:
        for entry in listing:
            match = _SCRATCH_NAME.match(entry.name)
            if match is None or not entry.is_dir(follow_symlinks=False):
                continue
            reason = _stale(match.group("pid"), match.group("start"), match.group("host"),
                            now - entry.stat(follow_symlinks=False).st_mtime, older_than)
            if reason is not None:
                found.append(Leftover(entry.path, "temporary folder", reason))
    return found


def remove(leftovers: list[Leftover]) -> None:
    """Delete each leftover (abort each upload)."""
    for item in leftovers:
        location = item.location
        if location is None:  # a temporary folder on this machine
            shutil.rmtree(item.url, ignore_errors=True)
            continue
        with remote_errors(location, "delete"):
            if item.kind == "multipart upload":
                bucket, key = location.path.split("/", 1)
                location.fs.abort_mpu(bucket, key, item.upload_id)
            elif location.is_local and os.path.isdir(location.path):
                shutil.rmtree(location.path)
            else:
                location.fs.rm(location.path, recursive=item.kind == "partial folder")


def scratch_dir(kind: str, dir: str | os.PathLike | None = None) -> tempfile.TemporaryDirectory:
    """A temporary folder named for this process (see ``find_in_temporary``)."""
    from mlflow_archive_plugin.storage.location import owner_tag

    return tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{kind}-{owner_tag()}-", dir=dir)


def _parent(location: Location) -> Location:
    path = location.path.rstrip("/")
    parent = posixpath.dirname(path) if not location.is_local else os.path.dirname(path)
    url = parent if location.is_local else location.url.rstrip("/").rsplit("/", 1)[0]
    return dataclasses.replace(location, url=url, path=parent)


def _age(entry: dict, now: float) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "modified"):
        value = entry.get(key)
        if isinstance(value, (int, float)):
            return now - float(value)
        if isinstance(value, dt.datetime):
            return now - value.timestamp()
    return None


def _stale_uploads(location: Location, folder: Location, only: str | None,
                   older_than: float) -> list[Leftover]:
    bucket, _, prefix = folder.path.partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    found = []
    now = time.time()
    with remote_errors(folder, "list the unfinished uploads of"):
        uploads = location.fs.list_multipart_uploads(bucket)
    for upload in uploads:
        key = upload.get("Key", "")
        if not key.startswith(prefix) or "/" in key[len(prefix):]:
            continue
        if only is not None and key[len(prefix):] != only:
            continue
        initiated = upload.get("Initiated")
        age = now - initiated.timestamp() if isinstance(initiated, dt.datetime) else None
        if age is not None and age > older_than:
            where = dataclasses.replace(folder, url=f"s3://{bucket}/{key}", path=f"{bucket}/{key}")
            found.append(Leftover(where.url, "multipart upload",
                                  f"unfinished upload started {_duration(age)} ago (S3 keeps "
                                  "no owner with it)", upload_id=upload.get("UploadId"),
                                  location=where))
    return found
