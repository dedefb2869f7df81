"""``model-card.md``: description, intended use, inputs and outputs, tags, parameters,
metrics and lineage of the model, written from the registry as it was at export."""

from __future__ import annotations

import datetime
from typing import Any

from mlflow_archive_plugin.formats.portable.files import EXAMPLE_FILE, PREDICT_FILE, SIGNATURE_FILE
from mlflow_archive_plugin.formats.portable.signature import shape_text
from mlflow_archive_plugin.snapshot import Snapshot

# Tags holding an MLSteam package's hook files (formats/mlarchive keeps them).
HOOK_TAG_PREFIX = "mlsteam.hook."


def model_card(snapshot: Snapshot, signature: dict[str, Any]) -> str:
    """``model-card.md``: description, intended use, inputs and outputs, tags, parameters,
    metrics and lineage, from the registry as it was at export."""
    registered, version = snapshot.registered_model, snapshot.model_version
    logged, run = snapshot.logged_model, snapshot.run
    title = snapshot.display_name + (f" version {version.version}" if version else "")
    lines = [f"# {title}", ""]
    descriptions = [text for text in (version.description if version else None,
                                      registered.description if registered else None) if text]
    lines += [*(descriptions or ["No description was recorded in the registry."]), ""]
    lines += ["## Intended use", "", _intended_use(snapshot), ""]
    lines += ["## Model", ""]
    lines += _bullets([
        ("Registered model", registered.name if registered else None),
        ("Version", version.version if version else None),
        ("Aliases", ", ".join(version.aliases) if version and version.aliases else None),
        ("Stage", version.current_stage if version and version.current_stage != "None"
         else None),
        ("Flavors", ", ".join(sorted(snapshot.mlmodel.get("flavors") or {})) or None),
        ("Model type", logged.model_type if logged else None),
        ("MLflow version", snapshot.mlmodel.get("mlflow_version")),
        ("Created", _when(version.creation_timestamp if version else None)),
    ])
    lines += ["", "## Inputs and outputs", "",
              f"From `{SIGNATURE_FILE}` (null in a shape: any size); an example payload is in "
              f"`{EXAMPLE_FILE}`.", ""]
    lines += _table(["", "name", "type", "shape"], [
        [side[:-1], spec["name"] or "-", str(spec["type"]), shape_text(spec["shape"])]
        for side in ("inputs", "outputs") for spec in signature.get(side) or []
    ])
    lines += ["", "## Tags", ""]
    # MLflow's own bookkeeping tags (mlflow.user, mlflow.source.*) say nothing about the model.
    tag_rows = [[where, key, value] for where, tags in (
        ("registered model", registered.tags if registered else {}),
        ("version", version.tags if version else {}),
        ("logged model", logged.tags if logged else {}),
        ("run", run.tags if run else {}),
    ) for key, value in sorted(tags.items()) if not key.startswith("mlflow.")]
    # An MLSteam package's kept hooks are whole source files: the card names them only.
    tag_rows = [[where, key, f"({len(value)} characters of hook source)"]
                if key.startswith(HOOK_TAG_PREFIX) else [where, key, value]
                for where, key, value in tag_rows]
    lines += _table(["on", "tag", "value"], tag_rows) if tag_rows else ["None."]
    lines += ["", "## Parameters", ""]
    param_rows = _merged([("run", sorted((run.params if run else {}).items())),
                          ("logged model", sorted((logged.params if logged else {}).items()))])
    lines += _table(["parameter", "value", "of"], param_rows) if param_rows else ["None."]
    lines += ["", "## Metrics", "", "The last value of each (at its highest step).", ""]
    metric_rows = _metric_rows(snapshot)
    lines += (_table(["metric", "value", "step", "of"], metric_rows) if metric_rows
              else ["None."])
    lines += ["", "## Lineage", ""]
    lines += _bullets(_lineage(snapshot))
    lines += ["", "## Use", "", "```",
              "sha256sum -c checksum.txt",
              "pip install -r requirements.txt",
              f"python predict.py {EXAMPLE_FILE}",
              "```", "",
              f"`{PREDICT_FILE}` exposes `load_model()` and `predict(payload)`, which returns "
              "`{\"predictions\": ...}` as `mlflow models serve` does. Import the package into "
              "an MLflow registry with `mlflow-archive import`.", ""]
    return "\n".join(lines)


def _intended_use(snapshot: Snapshot) -> str:
    for section in (snapshot.model_version, snapshot.registered_model):
        for key, value in (section.tags if section else {}).items():
            if key.lower().replace("-", "_").replace(" ", "_") == "intended_use" and value:
                return value
    return ("Not recorded in the registry. Set an `intended_use` tag on the model version "
            "(or the registered model) to state it here.")


def _lineage(snapshot: Snapshot) -> list[tuple[str, str | None]]:
    run, logged, version, lineage = (snapshot.run, snapshot.logged_model,
                                     snapshot.model_version, snapshot.lineage)
    run_text = None
    if run is not None:
        run_text = f"{run.run_name or '-'} (`{run.run_id}`), {run.status or 'status unknown'}"
        if run.start_time:
            run_text += f", {_when(run.start_time)} to {_when(run.end_time) or 'unfinished'}"
    experiment = None
    if run is not None and (run.experiment_name or run.experiment_id):
        experiment = f"{run.experiment_name or '-'} (`{run.experiment_id}`)"
    return [
        ("Run", run_text),
        ("Experiment", experiment),
        ("Logged model", f"`{logged.model_id}`" if logged and logged.model_id else None),
        ("Source", f"`{version.source}`" if version and version.source else None),
        ("Exported from", f"`{lineage.model_uri}`" if lineage.model_uri else None),
        ("Tracking server", f"`{lineage.source_tracking_uri}`"
         if lineage.source_tracking_uri else None),
        ("Exported by", f"mlflow-archive-plugin {lineage.plugin_version}"
         if lineage.plugin_version else None),
    ]


def _metric_rows(snapshot: Snapshot) -> list[list[str]]:
    run_rows = []
    if snapshot.run is not None:
        for key, point in sorted(snapshot.run.latest_metrics().items()):
            run_rows.append((key, _number(point["value"]), str(point["step"])))
    latest: dict[str, dict[str, Any]] = {}
    for point in snapshot.logged_model.metrics if snapshot.logged_model else []:
        known = latest.get(point["key"])
        if known is None or (point["step"], point["timestamp"]) >= (known["step"],
                                                                    known["timestamp"]):
            latest[point["key"]] = point
    model_rows = [(key, _number(point["value"]), str(point["step"]))
                  for key, point in sorted(latest.items())]
    return _merged([("run", run_rows), ("logged model", model_rows)])


def _merged(sources: list[tuple[str, list[tuple[str, ...]]]]) -> list[list[str]]:
    """One row per distinct entry, naming every source it comes from (MLflow copies a run's
    params and metrics onto the model it logs)."""
    origins: dict[tuple[str, ...], list[str]] = {}
    for origin, rows in sources:
        for row in rows:
            origins.setdefault(row, []).append(origin)
    return [[*row, " and ".join(names)] for row, names in origins.items()]


def _bullets(items: list[tuple[str, Any]]) -> list[str]:
    lines = [f"- {label}: {value}" for label, value in items if value not in (None, "")]
    return lines or ["Not recorded."]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: Any) -> str:
        return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell(value) for value in row) + " |" for row in rows),
    ]


def _number(value: float) -> str:
    return f"{value:.6g}"


def _when(millis: int | None) -> str | None:
    if not millis:
        return None
    moment = datetime.datetime.fromtimestamp(millis / 1000, datetime.UTC)
    return moment.isoformat(timespec="seconds")
