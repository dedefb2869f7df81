"""What both bulk verbs share: the index's name and format, the outcome of each version
and of a run, the thread pool that moves models in parallel and its progress report."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mlflow_archive_plugin.errors import (
    ArchiveError,
    CorruptArchiveError,
    UnsupportedError,
)
from mlflow_archive_plugin.progress import enabled
from mlflow_archive_plugin.trust.parsing import load_json

INDEX_NAME = "registry-index.json"
INDEX_FORMAT = "mlflow-archive-registry-index"
INDEX_SCHEMA_VERSION = 1
# Versions made only to move a registry's numbering on (--preserve-version-numbers); deleted
# again at once, and by the next run if a run was killed before it could.
PLACEHOLDER_TAG = "mlflow_archive.placeholder"
PLACEHOLDER_SOURCE = "mlflow-archive-placeholder:/reserved"
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_WORKERS_DEFAULT = 4


def default_workers() -> int:
    """How many models go at once by default: a few, and no more than the machine's cores."""
    return max(1, min(_MAX_WORKERS_DEFAULT, os.cpu_count() or 1))


@dataclass
class VersionOutcome:
    """What a bulk run did with one model version.

    ``status`` is ``exported``, ``skipped`` (its archive was already there, intact and up to
    date) or ``failed`` for an export; ``imported``, ``reused`` (the target already held it),
    ``failed`` or ``blocked`` (not tried, because an earlier version of its model failed and
    versions keep their order) for an import. ``version`` is the source's version number,
    ``target_version`` the one it has in the target registry. ``number_kept`` says, for an
    import with ``preserve_version_numbers``, whether the two are equal.
    """

    name: str
    version: str
    status: str
    archive: str | None = None
    digest: str | None = None
    size: int | None = None
    target_version: str | None = None
    number_kept: bool | None = None
    error: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """One line a person reads: what happened and where."""
        what = f"{self.name} v{self.version}"
        if self.status == "exported":
            return f"exported {what} -> {self.archive}"
        if self.status == "skipped":
            return f"skipped {what}: {self.archive} is already there and up to date"
        if self.status in ("imported", "reused"):
            verb = "imported" if self.status == "imported" else "already imported"
            kept = "" if self.number_kept is not False else " (could not keep the number)"
            return f"{verb} {what} -> models:/{self.name}/{self.target_version}{kept}"
        if self.status == "blocked":
            return f"not imported {what}: {self.error}"
        return f"failed {what}: {self.error}"


@dataclass
class Failure:
    """A model, or one version of it, that a bulk run could not handle."""

    name: str
    version: str | None
    error: str

    def line(self) -> str:
        """``name vN: reason``, one line without a traceback."""
        what = self.name if self.version is None else f"{self.name} v{self.version}"
        return f"{what}: {self.error}"


@dataclass
class BulkResult:
    """The outcome of :func:`export_registry` or :func:`import_registry`.

    ``counts`` tallies ``versions`` by status; ``bytes`` is what went into archives (export)
    or was read from them (import); ``failures`` has one entry per failed model or version
    (``ok`` is false when there is any); ``renumbered`` lists the versions an import with
    ``preserve_version_numbers`` could not give their source number.
    """

    operation: str
    index: str
    tracking_uri: str | None
    models: int
    counts: dict[str, int]
    bytes: int
    seconds: float
    versions: list[VersionOutcome]
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    renumbered: list[VersionOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every model and version went through."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-serialisable data."""
        return {**dataclasses.asdict(self), "ok": self.ok}


Reporter = Callable[[VersionOutcome], None]


@contextlib.contextmanager
def _pinned_globals(tracking_uri: str) -> Iterator[None]:
    """Hold MLflow's global tracking URI, and the variables registration and download set,
    at the values every worker wants, for the whole run (see the module docstring)."""
    from mlflow_archive_plugin.mlflow_side.tracking import environment, global_tracking_uri

    with global_tracking_uri(tracking_uri), environment(
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    ):
        yield


def _worker_count(workers: int | None) -> int:
    count = default_workers() if workers is None else workers
    if count < 1:
        raise UnsupportedError(f"workers must be at least 1, not {count}")
    return count


def _run_parallel(count: int, items: Iterable, work: Callable, stop: threading.Event) -> list:
    """``work`` applied to every item, ``count`` at a time, results in the items' order.

    On an interrupt ``stop`` is set, so that the workers end after the version in hand,
    and models not started are dropped."""
    items = list(items)
    if count == 1 or len(items) <= 1:
        return [work(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(count, len(items)),
                              thread_name_prefix="mlflow-archive")
    try:
        futures = [pool.submit(work, item) for item in items]
        return [future.result() for future in futures]
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


class _Progress:
    """Hands each outcome to the caller's reporter, one thread at a time, and counts
    versions on a progress bar (off unless stderr is a terminal; see progress.py)."""

    def __init__(self, total: int, description: str, requested: bool | None,
                 reporter: Reporter | None) -> None:
        self._total = total
        self._description = description
        self._show = enabled(requested)
        self._reporter = reporter
        self._lock = threading.Lock()
        self._bar: Any = None

    def __enter__(self) -> Reporter:
        if self._show:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._total, desc=self._description, unit="version",
                             file=sys.stderr, leave=False)
        return self._report

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def _report(self, outcome: VersionOutcome) -> None:
        with self._lock:
            if self._reporter is not None:
                self._reporter(outcome)
            if self._bar is not None:
                self._bar.update(1)


def _counts(outcomes: list[VersionOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


def _reason(exc: BaseException) -> str:
    """One line for a failed version: the plugin's own message, else the exception's type
    and first line."""
    from mlflow_archive_plugin.mlflow_side.tracking import first_line

    if isinstance(exc, ArchiveError):
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _parse_index(raw: bytes, shown: str) -> dict[str, Any]:
    """A parsed, checked index; any defect is a one-line error naming it (one past the
    limits of :func:`load_json` is :class:`UnsafeArchiveError`)."""
    def bad(why: str) -> CorruptArchiveError:
        return CorruptArchiveError(f"{shown} is not a registry index: {why}")

    document = load_json(raw, what=shown)
    if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
        raise bad(f"'format' is not {INDEX_FORMAT!r}")
    schema = document.get("schema_version")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise bad("'schema_version' is not a positive integer")
    if schema > INDEX_SCHEMA_VERSION:
        raise CorruptArchiveError(f"{shown} has schema_version {schema}, newer than this "
                                  f"plugin reads ({INDEX_SCHEMA_VERSION}); upgrade "
                                  "mlflow-archive-plugin")
    models = document.get("models")
    if not isinstance(models, list):
        raise bad("'models' is not a list")
    names = set()
    for model in models:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str) \
                or not isinstance(model.get("versions"), list) \
                or not isinstance(model.get("aliases") or {}, dict):
            raise bad("a model is not an object with a name, versions and aliases")
        if model["name"] in names:
            raise bad(f"model {model['name']!r} is listed twice")
        names.add(model["name"])
        for version in model["versions"]:
            _check_index_version(version, model["name"], bad)
        model["versions"].sort(key=lambda v: int(v["version"]))
    return document


def _check_index_version(version: Any, name: str, bad) -> None:
    if not isinstance(version, dict) or not str(version.get("version", "")).isdigit():
        raise bad(f"a version of {name!r} has no version number")
    archive = version.get("archive")
    # The index may come from anywhere: it names files beside it, never elsewhere.
    if not isinstance(archive, str) or archive in ("", ".", "..") \
            or any(sep in archive for sep in ("/", "\\")) or ":" in archive:
        raise bad(f"version {version.get('version')} of {name!r} names archive {archive!r}, "
                  "not a file beside the index")
    if not isinstance(version.get("digest"), str):
        raise bad(f"version {version.get('version')} of {name!r} has no digest")


def _all_versions(client, filter_string: str) -> Iterator:
    return _pages(lambda token: client.search_model_versions(
        filter_string, max_results=10000, page_token=token))


def _pages(fetch: Callable[[str | None], Any]) -> Iterator:
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return
