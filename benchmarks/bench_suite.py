"""One table for moving a large MLflow model: the plugin against what a user would otherwise run.

Every row is measured in the same run on the same synthetic model: ``--size-mib`` of
incompressible weights plus small files, logged as an MLflow pyfunc model (the weights an
artifact of it) and registered on a real ``mlflow server`` on 127.0.0.1 (SQLite backend,
served artifacts). Rows:

- ``export-<layout>`` / ``import-<layout>``: ``mlflow-archive export`` of that version from
  the source server, and ``mlflow-archive import --on-exists new`` of the result into a second
  server, for the layouts mlflow (zip), mar, bentoml (.bentomodel), mlarchive and portable
  (zip); ``export-local``: the mlflow (zip) export from a third server whose artifact root
  is a local folder the client reads itself (``--no-serve-artifacts``), the model logged
  there too; ``write``: the plugin's archive writer alone on the downloaded files (no server);
- ``floor``: Python's zipfile STORED plus hashlib.sha256 of the downloaded model's files;
  ``tar``: ``sha256sum`` then ``tar -cf`` of them; ``archiver``: the real torch-model-archiver
  (from ``--torchserve-python``; the row is skipped, saying why, when it is absent) and
  ``model-archiver``: the plugin's drop-in with the same flags; ``get``: a GET of the
  weights file alone through the source server's artifact proxy, the bytes dropped (how fast
  the server sends); ``download`` / ``log-artifacts``:
  ``mlflow artifacts download`` of the model from the source server and ``mlflow artifacts
  log-artifacts`` of its files into the target server;
- ``migration`` (unless ``--skip-migration``): a registry of ``--migration-models`` small
  models moved between two more servers with ``export-registry --all`` and
  ``import-registry`` (into a fresh server each time), with ``--workers 1`` and
  ``--workers 4``.

``--rows`` takes a comma-separated list of those names; by default every row runs.

Each measurement is a fresh child process, repeated ``--repeat`` times, rows interleaved so
drift hits every row alike; the table shows medians. ``s`` is the command's own work: a
Python command is timed after its imports (MLflow's take seconds), a shell command by its
wall clock; ``wall s`` is the whole process. Ratios are to the floor measured in the same
run, since absolute times on a shared 2-core machine are noise. ``peak MB`` is the child's
peak RSS (``wait4``: the largest of it and its descendants; 1 MB = 10^6 bytes) and
``start MB`` what it held once its imports were done. The goal lines of issue 7 follow the
table, each PASS or MISS against the figure measured here.

    python benchmarks/bench_suite.py --size-mib 1024 --repeat 3
    python benchmarks/bench_suite.py --size-mib 4096 --repeat 1 --skip-migration \
        --rows floor,log-artifacts,write,export-mlflow,import-mlflow
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    ChildFailed,
    MlflowServer,
    child_env,
    peak_kib,
    report,
    run_measured,
    start_mlflow_server,
    write_random,
    zip_floor,
)

SUITE = str(Path(__file__).resolve())
MODEL_NAME = "bench-model"
# The file each layout's export writes; its extension chooses the container.
LAYOUT_FILES = {
    "mlflow": "model.zip",
    "mar": "model.mar",
    "bentoml": "model.bentomodel",
    "mlarchive": "model.mlarchive",
    "portable": "model-portable.zip",
}
LAYOUT_LABELS = {
    "mlflow": "mlflow (zip)",
    "mar": "mar",
    "bentoml": "bentoml (.bentomodel)",
    "mlarchive": "mlarchive",
    "portable": "portable (zip)",
}
PLUGIN_CLI = "mlflow_archive_plugin.cli:cli"
MLFLOW_CLI = "mlflow.cli:cli"
# Modules a command would import anyway, loaded before its clock starts.
PRELOAD = {
    "export": ["mlflow", "mlflow_archive_plugin.api", "mlflow_archive_plugin.mlflow_side.source"],
    "import": ["mlflow", "mlflow_archive_plugin.api", "mlflow_archive_plugin.mlflow_side.registry"],
    "bulk": ["mlflow", "mlflow_archive_plugin.mlflow_side.bulk",
             "mlflow_archive_plugin.mlflow_side.source",
             "mlflow_archive_plugin.mlflow_side.registry"],
    "mlflow": ["mlflow", "mlflow.cli"],
}
WORKER_COUNTS = (1, 4)
MIGRATION = "migration"  # the --rows name of the registry-migration rows
GOAL_EXPORT = 1.25  # native export, times the floor
# The export rows held to that goal, with where each reads the model from.
EXPORT_GOAL_ROWS = {"export-mlflow": "from the server's artifact proxy",
                    "export-local": "from a store the client reads in place"}
GOAL_IMPORT = 1.3  # import, times mlflow artifacts log-artifacts
GOAL_RSS_MB = 250.0
GOAL_SPEEDUP = 2.5  # migration with 4 workers against 1


# ------------------------------------------------------------------------------- children
# Each runs as ``bench_suite.py --child KIND JSON`` and reports through BENCH_REPORT. Only
# the standard library is imported at module level: the torch-model-archiver child runs
# under the torchserve tox environment's Python, which has no MLflow.


def child_floor(model: str, out: str) -> None:
    """zipfile STORED + sha256 of every file of ``model``."""
    started = time.perf_counter()
    zip_floor(Path(model), Path(out))
    report(os.environ["BENCH_REPORT"], time.perf_counter() - started, peak_kib())


def child_write(model: str, out: str) -> None:
    """The plugin's archive writer alone (mlflow layout, zip) on a local model folder."""
    from mlflow_archive_plugin.formats import get_layout
    from mlflow_archive_plugin.snapshot import Snapshot
    from mlflow_archive_plugin.storage.containers import get_container
    from mlflow_archive_plugin.storage.location import resolve
    from mlflow_archive_plugin.storage.pipeline import write_archive

    start = peak_kib()
    started = time.perf_counter()
    snapshot = Snapshot(model_dir=Path(model), mlmodel={"flavors": {}})
    write_archive(snapshot, get_layout("mlflow"), get_container("zip"), resolve(out),
                  show_progress=False)
    report(os.environ["BENCH_REPORT"], time.perf_counter() - started, start)


def child_click(target: str, args: list[str], preload: list[str]) -> None:
    """A click command (``module:attribute``) run in this process, timed after its imports."""
    for module in preload:
        importlib.import_module(module)
    module, attribute = target.split(":")
    command = getattr(importlib.import_module(module), attribute)
    start = peak_kib()
    started = time.perf_counter()
    try:
        command.main(args=args, prog_name=attribute, standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    report(os.environ["BENCH_REPORT"], time.perf_counter() - started, start)


def child_argv(module: str, function: str, args: list[str]) -> None:
    """A console script's function that reads ``sys.argv`` (torch-model-archiver's)."""
    entry = getattr(importlib.import_module(module), function)
    sys.argv = [module, *args]
    start = peak_kib()
    started = time.perf_counter()
    entry()
    report(os.environ["BENCH_REPORT"], time.perf_counter() - started, start)


def _pins() -> list[str]:
    """Exact requirements for the synthetic models, so every layout (portable too) takes them."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "cloudpickle", "numpy", "pandas")]


def child_log_model(tracking_uri: str, weights: str, labels: str) -> None:
    """Log the big model (weights and labels as artifacts, a signature) and register it."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    class WeightsModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            self.weights = context.artifacts["weights"]

        def predict(self, context, model_input, params=None):
            return np.zeros(len(model_input))

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    signature = infer_signature(pd.DataFrame({"x": [1.0, 2.0]}), np.zeros(2))
    with mlflow.start_run(run_name="bench"):
        mlflow.log_params({"size": os.path.getsize(weights), "kind": "synthetic"})
        mlflow.log_metric("loss", 0.5)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=WeightsModel(), signature=signature,
            artifacts={"weights": weights, "labels": labels}, pip_requirements=_pins(),
            registered_model_name=MODEL_NAME,
        )
    report(os.environ["BENCH_REPORT"], None, version=info.registered_model_version)


def child_log_registry(tracking_uri: str, count: int) -> None:
    """Register ``count`` small models (a pickled pyfunc, 64 KiB of weights), one version each."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    class SmallModel(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return np.zeros(len(model_input))

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    signature = infer_signature(pd.DataFrame({"x": [1.0, 2.0]}), np.zeros(2))
    pins = _pins()
    with tempfile.TemporaryDirectory() as scratch:
        weights = write_random(Path(scratch, "weights.bin"), 1)
        with weights.open("r+b") as handle:
            handle.truncate(64 * 1024)
        for number in range(count):
            with mlflow.start_run(run_name=f"small-{number:03d}"):
                mlflow.log_param("number", number)
                mlflow.log_metric("loss", 1 / (number + 1))
                mlflow.pyfunc.log_model(
                    name="model", python_model=SmallModel(), signature=signature,
                    artifacts={"weights": str(weights)}, pip_requirements=pins,
                    registered_model_name=f"small-{number:03d}",
                )
    report(os.environ["BENCH_REPORT"], None)


def child_get(url: str) -> None:
    """GET ``url`` as MLflow's client does (requests, 1 MiB reads), dropping the bytes."""
    import requests

    session = requests.Session()
    session.trust_env = False  # loopback only, whatever proxy the environment names
    start = peak_kib()
    started = time.perf_counter()
    with session.get(url, stream=True) as response:
        response.raise_for_status()
        while response.raw.read(1024 * 1024):
            pass
    report(os.environ["BENCH_REPORT"], time.perf_counter() - started, start)


def child_create_run(tracking_uri: str) -> None:
    """A run on ``tracking_uri`` for ``mlflow artifacts log-artifacts`` to log into."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("log-artifacts-baseline")
    report(os.environ["BENCH_REPORT"], None, run_id=client.create_run(experiment).info.run_id)


CHILDREN: dict[str, Callable[..., None]] = {
    "floor": child_floor,
    "write": child_write,
    "click": child_click,
    "argv": child_argv,
    "log-model": child_log_model,
    "log-registry": child_log_registry,
    "create-run": child_create_run,
    "get": child_get,
}


# --------------------------------------------------------------------------------- parent


def child(kind: str, python: str = sys.executable, **spec) -> list[str]:
    """The command line that runs child ``kind`` of this script under ``python``."""
    return [python, SUITE, "--child", kind, json.dumps(spec)]


def plugin(command: str, *args: str) -> list[str]:
    """``mlflow-archive COMMAND ARGS`` in a measured child."""
    preload = PRELOAD["bulk" if command.endswith("-registry") else command]
    return child("click", target=PLUGIN_CLI, args=[command, *args], preload=preload)


def mlflow_cli(*args: str) -> list[str]:
    """``mlflow ARGS`` in a measured child."""
    return child("click", target=MLFLOW_CLI, args=list(args), preload=PRELOAD["mlflow"])


def empty(folder: Path) -> None:
    """Remove everything inside ``folder``, keeping the folder."""
    for path in folder.iterdir() if folder.exists() else ():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass
class Job:
    """One measurement: the command, where it runs, what to clear before and after it."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None


@dataclass
class Row:
    key: str
    label: str
    plugin: bool  # counts for the peak-RSS goal
    job: Callable[[Bench], Job] | None
    skipped: str | None = None  # why the row was not measured


@dataclass
class Bench:
    """Everything the rows share: folders, servers and the model's files."""

    tmp: Path
    source: MlflowServer
    target: MlflowServer
    model: Path  # the model's files, as downloaded from the source server
    # A server whose artifact root clients read themselves (no proxy), the model on it too.
    local: MlflowServer | None = None
    run_id: str | None = None
    version: str = "1"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"models:/{MODEL_NAME}/{self.version}"

    def out(self, name: str) -> Path:
        return self.tmp / "out" / name

    def archive(self, layout: str) -> Path:
        return self.tmp / "archives" / LAYOUT_FILES[layout]

    def archiver_flags(self, export_path: Path) -> list[str]:
        """The same inputs for both archivers: the weights, a handler, the small files."""
        small = sorted(p for p in self.model.rglob("*")
                       if p.is_file() and p.name != "weights.bin")
        return ["--model-name", f"bench{os.getpid()}", "--version", "1.0",
                "--serialized-file", str(next(self.model.rglob("weights.bin"))),
                "--handler", str(self.tmp / "handler.py"),
                "--extra-files", ",".join(str(p) for p in small),
                "--export-path", str(export_path)]


def floor_job(bench: Bench) -> Job:
    out = bench.out("floor.zip")
    return Job(child("floor", model=str(bench.model), out=str(out)),
               after=lambda: remove(out))


def tar_job(bench: Bench) -> Job:
    out = bench.out("model.tar")
    script = f"find . -type f -exec sha256sum {{}} + > /dev/null && tar -cf {out} ."
    return Job(["sh", "-c", script], cwd=bench.model, after=lambda: remove(out))


def archiver_job(python: str, module: str) -> Callable[[Bench], Job]:
    def job(bench: Bench) -> Job:
        out = bench.out("mar")
        return Job(child("argv", python=python, module=module, function="generate_model_archive",
                         args=bench.archiver_flags(out)),
                   before=lambda: out.mkdir(), after=lambda: remove(out))
    return job


def get_job(bench: Bench) -> Job:
    """The weights alone through the source server's artifact proxy, bytes thrown away: how
    fast the server sends, with no client work beside receiving."""
    stored = next(bench.source.artifacts.rglob("weights.bin"))
    url = (f"{bench.source.url}/api/2.0/mlflow-artifacts/artifacts/"
           f"{stored.relative_to(bench.source.artifacts).as_posix()}")
    return Job(child("get", url=url))


def download_job(bench: Bench) -> Job:
    out = bench.out("download")
    return Job(mlflow_cli("artifacts", "download", "-u", bench.model_uri, "-d", str(out)),
               env={"MLFLOW_TRACKING_URI": bench.source.url}, after=lambda: remove(out))


def log_artifacts_job(bench: Bench) -> Job:
    return Job(mlflow_cli("artifacts", "log-artifacts", "-l", str(bench.model),
                          "-r", str(bench.run_id), "-a", "model"),
               env={"MLFLOW_TRACKING_URI": bench.target.url},
               after=lambda: empty(bench.target.artifacts))


def write_job(bench: Bench) -> Job:
    out = bench.out("write.zip")
    return Job(child("write", model=str(bench.model), out=str(out)), after=lambda: remove(out))


def export_args(bench: Bench, layout: str) -> list[str]:
    container = ["--container", "zip"] if layout == "portable" else []
    return [bench.model_uri, "-o", str(bench.archive(layout)), "--format", layout, *container,
            "--tracking-uri", bench.source.url, "--quiet"]


def export_local_job(bench: Bench) -> Job:
    out = bench.out("local.zip")
    assert bench.local is not None
    return Job(plugin("export", bench.model_uri, "-o", str(out), "--tracking-uri",
                      bench.local.url, "--quiet"), after=lambda: remove(out))


def export_job(layout: str) -> Callable[[Bench], Job]:
    def job(bench: Bench) -> Job:
        return Job(plugin("export", *export_args(bench, layout)),
                   before=lambda: remove(bench.archive(layout)))
    return job


def import_job(layout: str) -> Callable[[Bench], Job]:
    def job(bench: Bench) -> Job:
        return Job(plugin("import", str(bench.archive(layout)), "--tracking-uri",
                          bench.target.url, "--on-exists", "new", "--quiet"),
                   after=lambda: empty(bench.target.artifacts))
    return job


def make_rows(torchserve_python: str) -> dict[str, Row]:
    """Every row the suite knows, in the order it prints them."""
    real = Path(torchserve_python)
    missing = None if real.exists() else (
        f"{torchserve_python} not found: create it with `tox -e torchserve --notest` or pass "
        "--torchserve-python")
    rows = [
        Row("floor", "zipfile STORED + sha256 (floor)", False, floor_job),
        Row("tar", "tar + sha256sum", False, tar_job),
        Row("archiver", "torch-model-archiver", False,
            archiver_job(torchserve_python, "model_archiver.model_packaging"), missing),
        Row("model-archiver", "mlflow-model-archiver (same flags)", True,
            archiver_job(sys.executable, "mlflow_archive_plugin.torchserve.archiver")),
        Row("get", "GET of the weights via the proxy, dropped", False, get_job),
        Row("download", "mlflow artifacts download", False, download_job),
        Row("log-artifacts", "mlflow artifacts log-artifacts", False, log_artifacts_job),
        Row("write", "archive writer only, mlflow zip, no server", True, write_job),
    ]
    rows += [Row(f"export-{layout}", f"export {label}", True, export_job(layout))
             for layout, label in LAYOUT_LABELS.items()]
    rows.append(Row("export-local", "export mlflow (zip), store read in place", True,
                    export_local_job))
    rows += [Row(f"import-{layout}", f"import {label}", True, import_job(layout))
             for layout, label in LAYOUT_LABELS.items()]
    return {row.key: row for row in rows}


def measure(bench: Bench, job: Job) -> dict:
    if job.before:
        job.before()
    try:
        return run_measured(job.argv, {**bench.env, **job.env}, cwd=job.cwd)
    finally:
        if job.after:
            job.after()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ set-up


def prepare(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack,
            rows: dict[str, Row]) -> Bench:
    """Servers, the registered model and its downloaded files: everything not measured."""
    env = child_env(TMPDIR=str(tmp / "scratch"))
    tmp.mkdir()
    for folder in ("scratch", "out", "archives"):
        (tmp / folder).mkdir()
    (tmp / "handler.py").write_text("def handle(data, context):\n    return data\n")
    source = stack.enter_context(server(tmp / "source", args.server_workers))
    target = stack.enter_context(server(tmp / "target", args.server_workers))
    log(f"servers: source {source.url}, target {target.url}")
    weights = write_random(tmp / "weights.bin", args.size_mib)
    labels = tmp / "labels.json"
    labels.write_text(json.dumps({str(i): f"class-{i}" for i in range(1000)}))
    started = time.perf_counter()
    logged = run_measured(child("log-model", tracking_uri=source.url, weights=str(weights),
                                labels=str(labels)), env)
    bench = Bench(tmp, source, target, tmp / "model", version=str(logged["version"]), env=env)
    if "export-local" in rows:
        bench.local = stack.enter_context(server(tmp / "local", args.server_workers,
                                                 served=False))
        again = run_measured(child("log-model", tracking_uri=bench.local.url,
                                   weights=str(weights), labels=str(labels)), env)
        assert str(again["version"]) == bench.version, "both servers number the model alike"
    weights.unlink()  # the servers hold it now; the local copy is the downloaded one below
    log(f"logged and registered {bench.model_uri} in {time.perf_counter() - started:.0f} s")
    measure(bench, Job(mlflow_cli("artifacts", "download", "-u", bench.model_uri,
                                  "-d", str(bench.model)),
                       env={"MLFLOW_TRACKING_URI": source.url}))
    bench.model = next(bench.model.rglob("MLmodel")).parent
    if "log-artifacts" in rows:
        bench.run_id = run_measured(child("create-run", tracking_uri=target.url), env)["run_id"]
    for layout in LAYOUT_FILES:
        if f"import-{layout}" in rows and f"export-{layout}" not in rows:
            log(f"exporting {layout} once for its import row")
            measure(bench, export_job(layout)(bench))
    return bench


@contextlib.contextmanager
def server(root: Path, workers: int, served: bool = True):
    started = start_mlflow_server(sys.executable, root, workers, served)
    try:
        yield started
    finally:
        started.stop()


def archiver_version(python: str) -> str | None:
    proc = subprocess.run([python, "-c", "import importlib.metadata as m; "
                           "print(m.version('torch-model-archiver'))"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


# --------------------------------------------------------------------------- migration


@dataclass
class Migration:
    """Two servers for the registry migration: the source, and a fresh target per run."""

    source: MlflowServer
    tmp: Path
    models: int
    workers: int  # each server's
    env: dict[str, str]
    runs: int = 0

    def run(self, workers: int) -> tuple[dict, dict]:
        """Export the whole source registry, then import it into an empty server."""
        self.runs += 1
        folder = self.tmp / f"registry-{self.runs}"
        exported = run_measured(plugin("export-registry", "--all", "-o", str(folder),
                                       "--workers", str(workers), "--tracking-uri",
                                       self.source.url, "--quiet", "--json"), self.env)
        with server(self.tmp / f"target-{self.runs}", self.workers) as target:
            imported = run_measured(plugin("import-registry", str(folder), "--workers",
                                           str(workers), "--tracking-uri", target.url,
                                           "--quiet", "--json"), self.env)
        shutil.rmtree(self.tmp / f"target-{self.runs}")
        shutil.rmtree(folder)
        for result, verb in ((exported, "exported"), (imported, "imported")):
            summary = json.loads(result["stdout"].strip().splitlines()[-1])
            done = count_versions(summary, verb)
            if done != self.models:
                raise ChildFailed(f"{verb} {done} of {self.models} versions with --workers "
                                  f"{workers}: {result['stdout'][-2000:]}")
        return exported, imported


def count_versions(summary: dict, verb: str) -> int:
    """How many versions a bulk command's JSON summary says it ``verb`` (exported/imported)."""
    return int(summary.get("counts", {}).get(verb, 0))


def prepare_migration(args: argparse.Namespace, tmp: Path,
                      stack: contextlib.ExitStack, env: dict[str, str]) -> Migration:
    source = stack.enter_context(server(tmp / "source", args.server_workers))
    started = time.perf_counter()
    run_measured(child("log-registry", tracking_uri=source.url, count=args.migration_models),
                 env)
    log(f"registered {args.migration_models} small models on {source.url} in "
        f"{time.perf_counter() - started:.0f} s")
    return Migration(source, tmp, args.migration_models, args.server_workers, env)


# ------------------------------------------------------------------------------ output


def median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def mb(kib: float | None) -> str:
    return "-" if kib is None else f"{kib * 1024 / 1e6:.0f}"


def line(label: str, seconds: float | None, wall: float | None, ratio: float | None,
         peak: float | None, start: float | None, note: str = "") -> str:
    cells = [f"{label:44}",
             "-" if seconds is None else f"{seconds:8.2f}",
             "-" if wall is None else f"{wall:8.2f}",
             "-" if ratio is None else f"{ratio:8.2f}",
             f"{mb(peak):>8}", f"{mb(start):>8}"]
    return (f"{cells[0]} {cells[1]:>8} {cells[2]:>8} {cells[3]:>8} {cells[4]} {cells[5]}  "
            f"{note}").rstrip()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(args: argparse.Namespace, rows: dict[str, Row], results: dict[str, list[dict]],
                migration: dict[int, list[tuple[dict, dict]]], loads: list[str]) -> None:
    floor = median(results.get("floor", []), "seconds")
    log_artifacts = median(results.get("log-artifacts", []), "seconds")
    print(f"{args.size_mib} MiB of incompressible weights plus small files, logged as an "
          f"MLflow pyfunc model on mlflow server (SQLite, served artifacts, "
          f"--workers {args.server_workers}, job runner off); "
          f"median of {args.repeat} interleaved runs; "
          f"{os.cpu_count()} CPUs, load average {loads[0]} at the start, {loads[-1]} at the end")
    print(f"{'row':44} {'s':>8} {'wall s':>8} {'x floor':>8} {'peak MB':>8} {'start MB':>8}"
          "  note")
    for key, row in rows.items():
        if row.skipped:
            print(line(row.label, None, None, None, None, None, f"skipped: {row.skipped}"))
            continue
        runs = results[key]
        seconds = median(runs, "seconds")
        note = ""
        if key.startswith("import-") and log_artifacts:
            note = f"{seconds / log_artifacts:.2f}x log-artifacts"
        print(line(row.label, seconds, median(runs, "wall"),
                   seconds / floor if floor else None, median(runs, "peak_kib"),
                   median(runs, "start_kib"), note))
    totals = {}
    for workers, runs in migration.items():
        exports, imports = [run[0] for run in runs], [run[1] for run in runs]
        totals[workers] = statistics.median(e["seconds"] + i["seconds"] for e, i in runs)
        for verb, measured in (("export-registry", exports), ("import-registry", imports)):
            print(line(f"{verb} {args.migration_models} models, --workers {workers}",
                       median(measured, "seconds"), median(measured, "wall"), None,
                       median(measured, "peak_kib"), median(measured, "start_kib")))
    if totals:
        base = totals[WORKER_COUNTS[0]]
        for workers, total in totals.items():
            note = f"{base / total:.2f}x faster than --workers 1" if total != base else ""
            print(line(f"migration (export + import), --workers {workers}", total, None, None,
                       None, None, note))
    print_goals(args, rows, results, floor, log_artifacts, totals)


def print_goals(args: argparse.Namespace, rows: dict[str, Row], results: dict[str, list[dict]],
                floor: float | None, log_artifacts: float | None,
                totals: dict[int, float]) -> None:
    def seconds(key: str) -> float | None:
        return median(results.get(key, []), "seconds")

    print("\ngoals (issue 7), against the figures above:")
    exports = {key: seconds(key) for key in EXPORT_GOAL_ROWS}
    for key, where in EXPORT_GOAL_ROWS.items():
        if exports[key] is not None and floor:
            ratio = exports[key] / floor
            print(f"  {verdict(ratio <= GOAL_EXPORT)}  native export of {args.size_mib} MiB "
                  f"(mlflow zip, {where}): {ratio:.2f}x the floor, goal <= {GOAL_EXPORT}x")
    if not floor or all(value is None for value in exports.values()):
        print("  ----  native export: not measured (needs rows floor and export-mlflow or "
              "export-local)")
    for key, what in (("write", "the archive writer alone, on the same local files"),
                      ("get", "the server's artifact proxy alone, a GET of the weights with "
                              "the bytes dropped")):
        if (measured := seconds(key)) is not None and floor:
            print(f"        ({what}: {measured / floor:.2f}x the floor)")
    imported = seconds("import-mlflow")
    if imported is not None and log_artifacts:
        ratio = imported / log_artifacts
        print(f"  {verdict(ratio <= GOAL_IMPORT)}  import into a server with served artifacts "
              f"(mlflow zip): {ratio:.2f}x mlflow artifacts log-artifacts, goal <= "
              f"{GOAL_IMPORT}x")
    else:
        print("  ----  import: not measured (needs rows log-artifacts and import-mlflow)")
    peaks = {key: median(results[key], "peak_kib") for key, row in rows.items()
             if row.plugin and not row.skipped}
    if peaks:
        worst = max(peaks, key=lambda key: peaks[key])
        peak_mb = peaks[worst] * 1024 / 1e6
        starts = [median(results[key], "start_kib") for key in peaks
                  if key.startswith(("export-", "import-"))]
        held = f"; MLflow and the plugin imported, before any work: {mb(min(starts))} MB" \
            if starts else ""
        print(f"  {verdict(peak_mb < GOAL_RSS_MB)}  peak RSS at {args.size_mib} MiB: "
              f"{peak_mb:.0f} MB ({rows[worst].label}), goal < {GOAL_RSS_MB:.0f} MB{held}")
    if len(totals) == len(WORKER_COUNTS):
        speedup = totals[WORKER_COUNTS[0]] / totals[WORKER_COUNTS[-1]]
        print(f"  {verdict(speedup >= GOAL_SPEEDUP)}  {args.migration_models}-model migration: "
              f"--workers 4 {speedup:.2f}x faster than --workers 1, goal >= {GOAL_SPEEDUP}x")
    else:
        print("  ----  migration: not measured (--skip-migration, or --rows without migration)")


# -------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024,
                        help="Size of the synthetic weights (default: 1024).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each row (default: 3).")
    parser.add_argument("--rows", help="Comma-separated rows to measure (default: all): "
                        + ", ".join([*make_rows("").keys(), MIGRATION]))
    parser.add_argument("--migration-models", type=int, default=50,
                        help="Registered models in the migration (default: 50).")
    parser.add_argument("--skip-migration", action="store_true",
                        help="Leave the registry migration out.")
    parser.add_argument("--torchserve-python", default=".tox/torchserve/bin/python",
                        help="A Python with torch-model-archiver installed (default: the "
                        "torchserve tox environment's).")
    parser.add_argument("--server-workers", type=int, default=1,
                        help="Each mlflow server's --workers (default: 1, as the tests).")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    return parser.parse_args()


def select_rows(args: argparse.Namespace) -> tuple[dict[str, Row], bool]:
    """The rows ``--rows`` names (all by default), and whether the migration runs."""
    rows = make_rows(args.torchserve_python)
    if not args.rows:
        return rows, not args.skip_migration
    wanted = [key.strip() for key in args.rows.split(",") if key.strip()]
    unknown = [key for key in wanted if key not in (*rows, MIGRATION)]
    if unknown:
        sys.exit(f"unknown row {', '.join(unknown)}; choose from: {', '.join(rows)}, "
                 f"{MIGRATION}")
    selected = {key: row for key, row in rows.items() if key in wanted}
    return selected, MIGRATION in wanted and not args.skip_migration


def main() -> None:
    args = parse_args()
    if args.child:
        CHILDREN[args.child[0]](**json.loads(args.child[1]))
        return
    rows, migrate = select_rows(args)
    archiver = rows.get("archiver")
    if archiver and not archiver.skipped:
        found = archiver_version(args.torchserve_python)
        if found is None:
            archiver.skipped = f"torch-model-archiver is not installed in {args.torchserve_python}"
        else:
            archiver.label = f"torch-model-archiver {found}"
    loads = [" ".join(f"{load:.1f}" for load in os.getloadavg())]
    results: dict[str, list[dict]] = {key: [] for key in rows}
    migration: dict[int, list[tuple[dict, dict]]] = {}
    with (tempfile.TemporaryDirectory(prefix="bench-suite-",
                                      dir=os.environ.get("BENCH_DIR")) as name,
          contextlib.ExitStack() as stack):
        tmp = Path(name)
        bench = prepare(args, tmp / "model-bench", stack, rows) if rows else None
        moving = None
        if migrate:
            (tmp / "migration").mkdir()
            moving = prepare_migration(args, tmp / "migration", stack,
                                       child_env(TMPDIR=str(tmp / "migration")))
        for repeat in range(1, args.repeat + 1):  # interleaved, so drift hits every row alike
            for key, row in rows.items():
                if row.skipped or bench is None:
                    continue
                results[key].append(measure(bench, row.job(bench)))
                log(f"run {repeat}/{args.repeat}  {key:18} {results[key][-1]['seconds']:8.2f} s")
            if moving is not None:
                for workers in WORKER_COUNTS:
                    exported, imported = moving.run(workers)
                    migration.setdefault(workers, []).append((exported, imported))
                    log(f"run {repeat}/{args.repeat}  migration --workers {workers}: export "
                        f"{exported['seconds']:.2f} s, import {imported['seconds']:.2f} s")
    loads.append(" ".join(f"{load:.1f}" for load in os.getloadavg()))
    print_table(args, rows, results, migration, loads)


if __name__ == "__main__":
    main()
