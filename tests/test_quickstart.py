"""The quickstart example runs end to end: two SQLite registries, export, verify, import."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
MODEL_NAME = "iris-classifier"


def test_quickstart_round_trip_matches(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}

    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--workdir", str(workdir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        encoding="utf-8",
        timeout=300,
        check=False,
    )

    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    table = [line for line in proc.stdout.splitlines() if " | " in line]
    assert table, output
    assert any(line.count(MODEL_NAME) == 2 for line in table), "\n".join(table)
    assert "✗" not in proc.stdout, "\n".join(table)
    assert (workdir / "mlflow.db").is_file()
    assert (workdir / "target.db").is_file()
