"""Native export and read-back of a synthetic model against the practical floor, in one run.

Each measurement runs in a fresh subprocess (so peak RSS is its own) and is repeated; the
table shows medians and the ratio to the floor measured in the same run, because absolute
times on a shared 2-core machine are noise.

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
    from mlflow_archive_plugin.archive import write_archive
    from mlflow_archive_plugin.containers import get_container
    from mlflow_archive_plugin.layouts import get_layout
    from mlflow_archive_plugin.location import resolve
    from mlflow_archive_plugin.snapshot import Snapshot

    snapshot = Snapshot(model_dir=model, mlmodel={"flavors": {}})
    write_archive(snapshot, get_layout("mlflow"), get_container("zip"), resolve(str(out)),
                  show_progress=False)


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


def run_child(task: str, model: str, out: str) -> None:
    """Child process: run one task, print seconds and peak RSS as JSON."""
    import resource

    if task == "verify" or task.startswith("mlflow-archive"):
        import mlflow_archive_plugin.archive  # noqa: F401 - import time is not export time
    started = time.perf_counter()
    if task == "verify":
        plugin_verify(Path(model))
    else:
        TASKS[task](Path(model), Path(out))
    elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "peak_mib": peak_kib / 1024}))


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
    parser.add_argument("--child", nargs=3, metavar=("TASK", "MODEL", "OUT"))
    args = parser.parse_args()
    if args.child:
        run_child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        model = make_model(Path(tmp), args.size_mib)
        results: dict[str, list[dict]] = {name: [] for name in [*TASKS, "verify (read back)"]}
        archive = Path(tmp, "plugin.zip")
        for _ in range(args.repeat):  # interleaved, so drift hits every row alike
            for name in TASKS:
                results[name].append(measure(name, model, Path(tmp, "out")))
            measure("mlflow-archive export (zip)", model, archive)
            results["verify (read back)"].append(measure("verify", archive, Path(tmp, "x")))
        base = statistics.median(r["seconds"] for r in results[next(iter(TASKS))])
        print(f"{args.size_mib} MiB incompressible weights, median of {args.repeat} runs")
        print(f"{'task':34} {'seconds':>8} {'x floor':>8} {'peak RSS MiB':>13}")
        for name, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            peak = statistics.median(r["peak_mib"] for r in runs)
            print(f"{name:34} {seconds:8.2f} {seconds / base:8.2f} {peak:13.0f}")


if __name__ == "__main__":
    main()
