"""Quickstart: export a registered MLflow model to an archive and import it into another registry.

    python examples/quickstart.py --workdir .demo      (what `make demo` runs)

What it does, all inside --workdir, with two local SQLite registries and no server:

1. trains a small scikit-learn model and registers it in ``sqlite:///mlflow.db`` as
   ``iris-classifier`` version 1, with params, a metric history, tags, descriptions and
   the alias ``champion``;
2. exports that version with ``export_model`` into ``archives/``;
3. inspects and verifies the archive with ``inspect_archive`` and ``verify_archive``;
4. imports it into an empty second registry, ``sqlite:///target.db``, with ``import_archive``;
5. reads both registries back and prints a side-by-side comparison.

Exit status: 0 when every compared field matches, 1 when any differs or the archive step fails,
2 when --workdir holds files this script did not make.
"""

import argparse
import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import mlflow.sklearn
from mlflow import MlflowClient
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from mlflow_archive_plugin import (
    ArchiveError,
    export_model,
    import_archive,
    inspect_archive,
    verify_archive,
)

MODEL_NAME = "iris-classifier"
SOURCE_URI = "sqlite:///mlflow.db"  # relative to --workdir: the script chdirs there first
TARGET_URI = "sqlite:///target.db"
ARCHIVE_DIR = "archives"
DOWNLOAD_DIR = "downloads"  # model files read back from each registry, for the file digest

# Everything this script creates in --workdir, and so the only things it ever deletes there.
MARKER = ".mlflow-archive-quickstart"
OWN_PATHS = ("mlflow.db", "target.db", ARCHIVE_DIR, DOWNLOAD_DIR, "mlruns", "mlartifacts")

# Tags the importer adds to the target version (provenance); listed apart from the originals.
ARCHIVE_TAG_PREFIX = "mlflow_archive."
MLFLOW_SYSTEM_TAG_PREFIX = "mlflow."

PREDICTION_ROWS = [0, 25, 50, 75, 100, 125]  # a few rows from each of the three iris classes
CELL_WIDTH = 40
UNAVAILABLE = "(unavailable"  # a value that could not be read never counts as a match


# --------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(".demo"),
        help="folder for the two registries, their artifacts and the archive (default: .demo)",
    )
    return parser.parse_args(argv)


def prepare_workdir(workdir: Path) -> None:
    """Create --workdir and remove what an earlier run of this script left there, nothing else."""
    workdir.mkdir(parents=True, exist_ok=True)
    marker = workdir / MARKER
    leftovers = [workdir / name for name in OWN_PATHS if (workdir / name).exists()]
    if leftovers and not marker.exists():
        names = ", ".join(p.name for p in leftovers)
        print(
            f"error: {workdir} already holds {names}, which this script did not create; "
            "pick another --workdir",
            file=sys.stderr,
        )
        raise SystemExit(2)
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    marker.write_text("made by examples/quickstart.py; it deletes only: " + " ".join(OWN_PATHS))


def quiet_mlflow() -> None:
    """Keep the demo output to what the demo prints."""
    for name in ("mlflow", "alembic", "sqlalchemy", "urllib3", "git"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Dependency-inference, signature and version-mismatch notices are not what this demo shows.
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"


def forget_configured_registries() -> None:
    """The demo brings its own two registries; ignore any the shell points MLflow at."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hold back MLflow's console notices ("Successfully registered model ..."); replay on error."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


def use_tracking(uri: str) -> None:
    """Point MLflow's fluent API (start_run, log_model, pyfunc.load_model) at one registry.

    Only the tracking URI is set: with no registry URI set, MLflow uses the tracking URI for
    the registry too, so MlflowClient(tracking_uri=...) and the plugin follow the same store.
    """
    mlflow.set_tracking_uri(uri)


def heading(text: str) -> None:
    print(f"\n== {text}")


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024**2:
        return f"{size / 1024:.1f} KiB ({size} B)"
    return f"{size / 1024**2:.1f} MiB ({size} B)"


# --------------------------------------------------------------------------- 1. source registry


def build_source_registry() -> str:
    """Train, log and register the model in the source registry; return its version number."""
    use_tracking(SOURCE_URI)
    features, labels = load_iris(return_X_y=True, as_frame=True)
    params = {"C": 0.5, "max_iter": 300, "solver": "lbfgs"}

    mlflow.set_experiment("quickstart")
    with mlflow.start_run(run_name="iris-logreg") as run:
        mlflow.log_params(params)
        mlflow.set_tags({"team": "ml-platform", "dataset": "iris", "purpose": "quickstart"})

        scores = cross_val_score(LogisticRegression(**params), features, labels, cv=5)
        for fold, score in enumerate(scores):
            mlflow.log_metric("cv_accuracy", float(score), step=fold)

        model = LogisticRegression(**params).fit(features, labels)
        mlflow.log_metric("train_accuracy", float(model.score(features, labels)))

        with quiet_stderr():
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                registered_model_name=MODEL_NAME,
                input_example=features.head(3),
            )
    version = str(info.registered_model_version)

    client = MlflowClient(tracking_uri=SOURCE_URI, registry_uri=SOURCE_URI)
    client.update_registered_model(
        MODEL_NAME, description="Logistic regression on the iris data set."
    )
    client.set_registered_model_tag(MODEL_NAME, "owner", "ml-platform")
    client.set_registered_model_tag(MODEL_NAME, "task", "classification")
    client.update_model_version(MODEL_NAME, version, description="First version: C=0.5, 5-fold CV.")
    client.set_model_version_tag(MODEL_NAME, version, "validation", "passed")
    client.set_model_version_tag(MODEL_NAME, version, "framework", "scikit-learn")
    client.set_registered_model_alias(MODEL_NAME, "champion", version)

    print(f"registry   {SOURCE_URI}")
    print(f"run        {run.info.run_id} (experiment 'quickstart')")
    print(f"model      models:/{MODEL_NAME}/{version}  alias @champion")
    print(f"cv_accuracy {', '.join(f'{s:.3f}' for s in scores)}")
    return version


# --------------------------------------------------------------------------- read a registry back


@dataclass
class RegistryView:
    """Everything the comparison looks at, read back from one registry."""

    uri: str
    version: str
    registered_model: Any
    model_version: Any
    run: Any | None
    metric_history: dict[str, list[tuple[int, float, int]]]
    logged_model: Any | None
    files: dict[str, str]  # relative path -> sha256
    predictions: list[Any]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_registry(uri: str, version: str, fallback_run_id: str | None = None) -> RegistryView:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    registered_model = client.get_registered_model(MODEL_NAME)
    model_version = client.get_model_version(MODEL_NAME, version)

    run_id = model_version.run_id or fallback_run_id
    run = client.get_run(run_id) if run_id else None
    history: dict[str, list[tuple[int, float, int]]] = {}
    if run is not None:
        for key in sorted(run.data.metrics):
            points = client.get_metric_history(run_id, key)
            history[key] = sorted((m.step, m.value, m.timestamp) for m in points)

    # MLflow 3 versions point at a logged model; some stores fill only `source` ("models:/m-...").
    model_id = getattr(model_version, "model_id", None)
    if not model_id and (found := re.fullmatch(r"models:/(m-[0-9a-f]+)", model_version.source)):
        model_id = found.group(1)
    logged_model = client.get_logged_model(model_id) if model_id else None

    model_uri = f"models:/{MODEL_NAME}/{version}"
    side = "source" if uri == SOURCE_URI else "target"
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri,
            dst_path=str(Path(DOWNLOAD_DIR, side)),
            tracking_uri=uri,
            registry_uri=uri,
        )
    )
    files = {
        path.relative_to(local).as_posix(): sha256_file(path)
        for path in sorted(local.rglob("*"))
        if path.is_file()
    }

    use_tracking(uri)
    features, _ = load_iris(return_X_y=True, as_frame=True)
    predictions = mlflow.pyfunc.load_model(model_uri).predict(features.iloc[PREDICTION_ROWS])

    return RegistryView(
        uri=uri,
        version=version,
        registered_model=registered_model,
        model_version=model_version,
        run=run,
        metric_history=history,
        logged_model=logged_model,
        files=files,
        predictions=[int(p) for p in predictions],
    )


# --------------------------------------------------------------------------- compare


def fmt_mapping(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(mapping.items())) or "(none)"


def fmt_time(millis: int | None) -> str:
    if millis is None:
        return "(none)"
    stamp = datetime.fromtimestamp(millis / 1000, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def files_digest(files: dict[str, str]) -> str:
    """sha256 over `sha256sum`-style lines, one per model file, sorted by path."""
    listing = "".join(f"{sha}  {path}\n" for path, sha in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def history_digest(history: list[tuple[int, float, int]]) -> str:
    text = "\n".join(f"{step} {value!r} {timestamp}" for step, value, timestamp in history)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def original_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not k.startswith(ARCHIVE_TAG_PREFIX)}


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in tags.items()
        if not k.startswith((MLFLOW_SYSTEM_TAG_PREFIX, ARCHIVE_TAG_PREFIX))
    }


@dataclass
class Row:
    field: str
    source: str
    target: str

    @property
    def match(self) -> bool:
        return self.source == self.target and not self.source.startswith(UNAVAILABLE)


def compare(src: RegistryView, dst: RegistryView) -> list[Row]:
    """One row per field of the registry entry that a lossless import must reproduce."""
    rows: list[Row] = []

    def add(field: str, read: Callable[[RegistryView], Any]) -> None:
        values = []
        for view in (src, dst):
            try:
                value = read(view)
            except (AttributeError, KeyError, TypeError, IndexError) as exc:
                value = f"{UNAVAILABLE}: {type(exc).__name__}: {exc})"
            values.append(value if isinstance(value, str) else str(value))
        rows.append(Row(field, *values))

    add("registered model name", lambda v: v.registered_model.name)
    add("registered model description", lambda v: v.registered_model.description or "(none)")
    add("registered model tags", lambda v: fmt_mapping(v.registered_model.tags))
    add("version description", lambda v: v.model_version.description or "(none)")
    add("version tags", lambda v: fmt_mapping(original_tags(v.model_version.tags)))
    add("version aliases", lambda v: ", ".join(sorted(v.model_version.aliases)) or "(none)")
    add("version has source run", lambda v: "yes" if v.model_version.run_id else "no")
    add("logged model name", lambda v: v.logged_model.name)
    add("run name", lambda v: v.run.info.run_name)
    add("run status", lambda v: v.run.info.status)
    add("run params", lambda v: fmt_mapping(v.run.data.params))
    add("run tags (user-set)", lambda v: fmt_mapping(user_tags(v.run.data.tags)))
    add("run metric keys", lambda v: ", ".join(v.metric_history) or "(none)")
    for key in sorted(src.metric_history):
        add(f"metric {key}: final", lambda v, k=key: repr(v.metric_history[k][-1][1]))
        add(f"metric {key}: points", lambda v, k=key: len(v.metric_history[k]))
        add(f"metric {key}: history", lambda v, k=key: history_digest(v.metric_history[k]))
    add("run start time", lambda v: fmt_time(v.run.info.start_time))
    add("run end time", lambda v: fmt_time(v.run.info.end_time))
    add("model files", lambda v: f"{len(v.files)} files")
    add("model files digest", lambda v: "sha256:" + files_digest(v.files)[:16])
    add(f"predictions ({len(PREDICTION_ROWS)} rows)", lambda v: " ".join(map(str, v.predictions)))
    return rows


def clip(text: str, width: int = CELL_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(rows: list[Row]) -> None:
    lines = [("field", "source", "target", "match")]
    lines += [(r.field, clip(r.source), clip(r.target), "✓" if r.match else "✗") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for index, line in enumerate(lines):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            print("-+-".join("-" * width for width in widths))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if hasattr(sys.stdout, "reconfigure"):  # show progress in order, even through a pipe
        sys.stdout.reconfigure(line_buffering=True, errors="replace")
    quiet_mlflow()
    forget_configured_registries()
    workdir = args.workdir.resolve()
    prepare_workdir(workdir)
    os.chdir(workdir)  # registries, artifacts and the archive all land in here
    print(f"working in {workdir}")

    heading("1. source registry: train, log and register")
    source_version = build_source_registry()

    try:
        heading("2. export")
        exported = export_model(
            f"models:/{MODEL_NAME}/{source_version}", f"{ARCHIVE_DIR}/", tracking_uri=SOURCE_URI
        )
        print(f"location   {exported.location}")
        print(f"format     {exported.format} in a {exported.container} container")
        print(f"size       {human_size(exported.size)}")
        print(f"sha256     {exported.sha256}")
        print(f"files      {exported.file_count}")
        print(f"digest     {exported.digest}  (content digest: sha256 of checksum.txt)")

        heading("3. inspect and verify")
        info = inspect_archive(exported.location)
        registered = info.metadata["registered_model"]["name"]
        version = info.metadata["model_version"]["version"]
        print(f"layout     {info.layout}, container {info.container}, {len(info.files)} files")
        print(f"model      {registered} version {version}")
        report = verify_archive(exported.location)
        print(f"verify     {'ok' if report.ok else 'FAILED'}, {report.checked} files checked")
        if not report.ok:
            for problem in report.problems:
                print(f"  - {problem}")
            return 1

        heading("4. import into an empty registry")
        imported = import_archive(exported.location, tracking_uri=TARGET_URI)
        print(f"registry   {TARGET_URI}")
        print(f"model      {imported.model_uri} (reused: {imported.reused})")
        print(f"run        {imported.run_id}")
        print(f"logged     {imported.model_id}")
        print(f"digest     {imported.digest}")
    except ArchiveError as exc:
        print(f"archive error: {exc}", file=sys.stderr)
        return 1

    heading("5. source vs target")
    source = read_registry(SOURCE_URI, source_version)
    target = read_registry(TARGET_URI, str(imported.version), fallback_run_id=imported.run_id)
    print(f"source: models:/{MODEL_NAME}/{source.version} in {SOURCE_URI}")
    print(f"target: models:/{MODEL_NAME}/{target.version} in {TARGET_URI}\n")
    rows = compare(source, target)
    # The archive the target version came from is the one exported from the source.
    rows.append(Row("archive content digest", str(exported.digest), str(imported.digest)))
    print_table(rows)

    added = {k: v for k, v in target.model_version.tags.items() if k.startswith(ARCHIVE_TAG_PREFIX)}
    print(f"\nprovenance tags the import added to the target version ({len(added)}):")
    for key, value in sorted(added.items()):
        print(f"  {key} = {value}")
    if not added:
        print("  (none)")

    elapsed = time.perf_counter() - started
    differing = [row for row in rows if not row.match]
    if differing:
        print(f"\n{len(differing)} of {len(rows)} rows differ:")
        for row in differing:
            print(f"  {row.field}\n    source: {row.source}\n    target: {row.target}")
        print(f"done in {elapsed:.1f} s: FAILED")
        return 1
    print(f"\nall {len(rows)} rows match; done in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
