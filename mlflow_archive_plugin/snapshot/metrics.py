"""A run's metric history as a file of JSON lines, written and read one point at a time.

A run may hold millions of metric points; as Python objects they take gigabytes. Export
writes them to ``mlflow-archive-metrics.jsonl`` (one point per line: key, value, step,
timestamp), beside ``mlflow-archive.json`` and listed in ``checksum.txt``. The document
keeps only a summary (``run.metric_history``: the file's name, its point count, and each
key's latest point and count), so readers that want the latest values never open the file,
and import streams it in MLflow's batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mlflow_archive_plugin.errors import CorruptArchiveError

METRICS_NAME = "mlflow-archive-metrics.jsonl"
# A point is a key (MLflow allows 250 characters) and three numbers; a longer line is not one.
MAX_LINE_BYTES = 4096


def metrics_name(index: int) -> str:
    """The file of the ``index``-th model of an archive (0 for an archive of one)."""
    return METRICS_NAME if index == 0 else f"mlflow-archive-metrics.{index}.jsonl"


def is_metrics_name(name: str) -> bool:
    """Whether ``name`` is one this module writes (so layouts keep model files off it)."""
    if name == METRICS_NAME:
        return True
    middle = name.removeprefix("mlflow-archive-metrics.").removesuffix(".jsonl")
    return middle != name and middle.isdigit()


def later(point: dict[str, Any], than: dict[str, Any] | None) -> bool:
    """Whether ``point`` supersedes ``than`` as a key's latest value (MLflow's order: the
    highest step, then the latest timestamp)."""
    return than is None or (point["step"], point["timestamp"]) >= (than["step"],
                                                                    than["timestamp"])


def latest_of(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    latest = None
    for point in history:
        if later(point, latest):
            latest = point
    return latest


class MetricWriter:
    """Writes points to a JSON-lines file and keeps the summary the document records."""

    def __init__(self, path: Path, name: str = METRICS_NAME):
        self.path = path
        self.name = name
        self.points = 0
        self.keys: dict[str, dict[str, Any]] = {}
        self._handle: IO[str] | None = None

    def __enter__(self) -> MetricWriter:
        self._handle = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in exit
        return self

    def __exit__(self, *exc_info) -> None:
        assert self._handle is not None
        self._handle.close()

    def add(self, key: str, value: float, step: int, timestamp: int) -> None:
        point = {"key": key, "value": value, "step": step, "timestamp": timestamp}
        assert self._handle is not None
        self._handle.write(json.dumps(point, allow_nan=True) + "\n")
        self.points += 1
        summary = self.keys.get(key)
        if summary is None:
            self.keys[key] = {"value": value, "step": step, "timestamp": timestamp, "points": 1}
            return
        summary["points"] += 1
        if later(point, summary):
            summary.update(value=value, step=step, timestamp=timestamp)

    def summary(self) -> dict[str, Any]:
        """``run.metric_history`` of the document."""
        return {"path": self.name, "points": self.points, "keys": self.keys}


def check_summary(summary: Any) -> None:
    """Refuse a ``run.metric_history`` of the wrong shape (TypeError, as the document's other
    checks do)."""
    if not isinstance(summary, dict):
        raise TypeError("run.metric_history is not an object")
    if not isinstance(summary.get("path"), str) or not is_metrics_name(summary["path"]):
        raise TypeError(f"run.metric_history names no file of the form {METRICS_NAME}")
    points, keys = summary.get("points"), summary.get("keys")
    if not _is_int(points) or points < 0:
        raise TypeError("run.metric_history.points is not a count")
    if not isinstance(keys, dict):
        raise TypeError("run.metric_history.keys is not an object")
    for key, latest in keys.items():
        if not isinstance(latest, dict) or not _is_int(latest.get("points")):
            raise TypeError(f"run.metric_history.keys[{key!r}] is not a summary of points")
        check_point(latest)


def check_point(point: Any) -> None:
    if not isinstance(point, dict):
        raise TypeError("a metric point is not an object")
    for name, kinds in (("value", (int, float)), ("step", int), ("timestamp", int)):
        value = point.get(name)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise TypeError(f"a metric point's {name!r} is not a number")


def read_points(path: Path, summary: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each point of the file, checked, one line at a time; a file that does not match
    ``summary`` (a bad line, more or fewer points, a key it does not list) is refused with
    :class:`CorruptArchiveError` naming the line."""
    name = summary["path"]
    counted = 0
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, also when abandoned
    except FileNotFoundError:
        raise CorruptArchiveError(
            f"{name} is missing, though mlflow-archive.json lists {summary['points']} metric "
            "points in it; the archive is damaged") from None
    with handle:
        while line := handle.readline(MAX_LINE_BYTES + 1):
            counted += 1
            yield _parsed(line, name, counted, summary)
    if counted != summary["points"]:
        raise CorruptArchiveError(
            f"{name} holds {counted} points, mlflow-archive.json says {summary['points']}; "
            "the archive is damaged")


def _parsed(line: bytes, name: str, number: int, summary: dict[str, Any]) -> dict[str, Any]:
    if len(line) > MAX_LINE_BYTES or not line.endswith(b"\n"):
        raise _bad(name, number, "is not one complete point")
    try:
        point = json.loads(line)
        check_point(point)
    except (ValueError, TypeError) as exc:
        raise _bad(name, number, f"is not a metric point ({exc})") from None
    except RecursionError:  # a 4 KiB line of brackets nests past the parser's limit
        raise _bad(name, number, "is not a metric point (it nests too deeply)") from None
    if not isinstance(point.get("key"), str) or point["key"] not in summary["keys"]:
        raise _bad(name, number, "names a key mlflow-archive.json does not list")
    return point


def _bad(name: str, number: int, what: str) -> CorruptArchiveError:
    return CorruptArchiveError(f"{name} line {number} {what}; the archive is damaged")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
