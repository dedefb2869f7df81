"""Native export and read-back of a synthetic model against the practical floor, in one run.

Each measurement runs in a fresh subprocess (so peak RSS is its own) and is repeated; the
table shows medians and the ratio to the floor measured in the same run, because absolute
times on a shared 2-core machine are noise. ``cpu s`` is the child's user plus system time:
where it exceeds the wall time, work ran on both cores; on a loaded machine the wall time
tends to it.

``export_model (local store)`` is the whole public export of the same files logged as an
MLflow model in a SQLite tracking store with a local artifact folder (metadata queries
included, MLflow's import time not), to show what reading the model where it lies saves.

    python benchmarks/bench_export.py --size-mib 1024 --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

CHUNK = 1024 * 1024


def make_model(folder: Path, size_mib: int) -> Path:
    """An MLflow-shaped model directory: incompressible weights plus small text files."""
    model = folder / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: x\n")
    (model / "requirements.txt").write_text("scikit-learn==1.5.0\n")
    with (model / "weights.bin").open("wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(CHUNK))
    return model


def floor(model: Path, out: Path) -> None:
    """What a careful hand-written exporter costs: zipfile STORED plus SHA-256 of each file."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(model.rglob("*")):
            digest = hashlib.sha256()
            with path.open("rb") as source, archive.open(f"model/{path.name}", "w",
                                                         force_zip64=True) as sink:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)


def plugin_export(model: Path, out: Path) -> None:
    """The plugin's native export pipeline on the same files (no MLflow server involved)."""
    from mlflow_archive_plugin.formats import get_layout
    from mlflow_archive_plugin.snapshot import Snapshot
    from mlflow_archive_plugin.storage.containers import get_container
    from mlflow_archive_plugin.storage.location import resolve
    from mlflow_archive_plugin.storage.pipeline import write_archive

    snapshot = Snapshot(model_dir=model, mlmodel={"flavors": {}})
    write_archive(snapshot, get_layout("mlflow"), get_container("zip"), resolve(str(out)),
                  show_progress=False)


def plugin_export_model(store: Path, out: Path) -> None:
    """The public export_model of the model logged in the local store described by ``store``."""
    from mlflow_archive_plugin import export_model

    logged = json.loads(store.read_text())
    export_model(logged["model_uri"], str(out), tracking_uri=logged["tracking_uri"],
                 progress=False)


def warm_up_store(store: Path) -> None:
    """Import MLflow and open the store once: MLflow's import and its per-process schema check
    (seconds, whatever the model's size) are not what the row measures."""
    from mlflow_archive_plugin.mlflow_side.tracking import connect

    logged = json.loads(store.read_text())
    client = connect(logged["tracking_uri"])
    client.get_logged_model(logged["model_uri"].removeprefix("models:/"))
    client.search_registered_models(max_results=1)


def log_to_local_store(model: Path, folder: Path) -> Path:
    """Log ``model`` as a logged model in a SQLite store with a local artifact folder; the
    description (tracking and model URIs) is written to a JSON file whose path is returned."""
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("bench", artifact_location=(folder / "store").as_uri())
    logged = client.create_logged_model(experiment, name="model")
    client.log_model_artifacts(logged.model_id, str(model))
    client.finalize_logged_model(logged.model_id, "READY")
    store = folder / "store.json"
    store.write_text(json.dumps({"tracking_uri": tracking_uri,
                                 "model_uri": f"models:/{logged.model_id}"}))
    return store


def plugin_verify(archive: Path) -> None:
    """Read every entry back and check it against checksum.txt."""
    from mlflow_archive_plugin import verify_archive

    assert verify_archive(str(archive), progress=False).ok


def tar_sha256sum(model: Path, out: Path) -> None:
    """The shell baseline: sha256sum of the files, then tar."""
    subprocess.run(f"sha256sum * > /dev/null && tar -cf {out} .", shell=True, check=True,
                   cwd=model)


TASKS = {
    "zipfile STORED + sha256 (floor)": floor,
    "tar + sha256sum": tar_sha256sum,
    "mlflow-archive export (zip)": plugin_export,
}
STORE_TASK = "export_model (local store)"


def run_child(task: str, model: str, out: str) -> None:
    """Child process: run one task, print seconds and peak RSS as JSON."""
    import resource

    if task == "verify" or task.startswith("mlflow-archive"):
        import mlflow_archive_plugin.storage.pipeline  # noqa: F401 - import time is not export time
    if task == STORE_TASK:
        warm_up_store(Path(model))
    started = time.perf_counter()
    cpu_before = os.times()
    if task == "verify":
        plugin_verify(Path(model))
    elif task == STORE_TASK:
        plugin_export_model(Path(model), Path(out))
    else:
        TASKS[task](Path(model), Path(out))
    elapsed = time.perf_counter() - started
    cpu_after = os.times()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "cpu": cpu, "peak_mib": peak_kib / 1024}))


def measure(task: str, model: Path, out: Path) -> dict:
    if out.exists():
        out.unlink()
    proc = subprocess.run([sys.executable, __file__, "--child", task, str(model), str(out)],
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-store", action="store_true",
                        help="skip the export_model row (no MLflow store is made)")
    parser.add_argument("--child", nargs=3, metavar=("TASK", "MODEL", "OUT"))
    parser.add_argument("--log-store", nargs=2, metavar=("MODEL", "FOLDER"))
    args = parser.parse_args()
    if args.child:
        run_child(*args.child)
        return
    if args.log_store:
        log_to_local_store(Path(args.log_store[0]), Path(args.log_store[1]))
        return
    with tempfile.TemporaryDirectory(prefix="bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        model = make_model(Path(tmp), args.size_mib)
        store = None
        if not args.no_store:  # in a child, so that this process stays small (peak RSS of
            store = Path(tmp, "store.json")  # children starts from their parent's)
            subprocess.run([sys.executable, __file__, "--log-store", str(model), tmp],
                           check=True, capture_output=True)
        rows = [*TASKS, *([] if store is None else [STORE_TASK]), "verify (read back)"]
        results: dict[str, list[dict]] = {name: [] for name in rows}
        archive = Path(tmp, "plugin.zip")
        for _ in range(args.repeat):  # interleaved, so drift hits every row alike
            for name in TASKS:
                results[name].append(measure(name, model, Path(tmp, "out")))
            if store is not None:
                results[STORE_TASK].append(measure(STORE_TASK, store, Path(tmp, "out.zip")))
            measure("mlflow-archive export (zip)", model, archive)
            results["verify (read back)"].append(measure("verify", archive, Path(tmp, "x")))
        base = statistics.median(r["seconds"] for r in results[next(iter(TASKS))])
        print(f"{args.size_mib} MiB incompressible weights, median of {args.repeat} runs")
        print(f"{'task':34} {'seconds':>8} {'x floor':>8} {'cpu s':>6} {'peak RSS MiB':>13}")
        for name, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            peak = statistics.median(r["peak_mib"] for r in runs)
            print(f"{name:34} {seconds:8.2f} {seconds / base:8.2f} {cpu:6.2f} {peak:13.0f}")


if __name__ == "__main__":
    main()
