"""The ``torchserve_server`` fixture serves a ``.mar`` built by the REAL torch-model-archiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import unique  # tests/conftest.py's helper, reached through this folder's conftest

HANDLER = '''\
import json


class EchoSumHandler:
    """Echoes each request body with the sum of its "values"."""

    def __init__(self):
        self.initialized = False

    def initialize(self, context):
        model = context.manifest["model"]
        self.name = model["modelName"]
        self.version = model["modelVersion"]
        self.initialized = True

    def handle(self, data, context):
        answers = []
        for row in data:
            body = row.get("body") if row.get("body") is not None else row.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            answers.append(
                {"model": self.name, "version": self.version, "echo": body,
                 "sum": sum(body["values"])}
            )
        return answers
'''


def archiver_executable() -> str:
    return str(Path(sys.executable).parent / "torch-model-archiver")


def test_fixture_serves_a_mar_built_by_the_real_archiver(tmp_path, torchserve_server):
    handler = tmp_path / "echo_sum_handler.py"
    handler.write_text(HANDLER)
    store = tmp_path / "store"
    store.mkdir()
    # The archiver stages in $TMPDIR/<model name>: a private TMPDIR and a unique name.
    staging = tmp_path / "archiver-tmp"
    staging.mkdir()
    name = unique("echo-sum")
    subprocess.run(
        [
            archiver_executable(),
            "--model-name", name,
            "--version", "1.0",
            "--handler", str(handler),
            "--export-path", str(store),
        ],
        check=True,
        env={**os.environ, "TMPDIR": str(staging)},
        timeout=120,
    )  # fmt: skip
    mar = store / f"{name}.mar"
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        assert "echo_sum_handler.py" in archive.namelist()
    assert manifest["archiverVersion"] == "0.12.0"
    assert manifest["model"]["handler"] == "echo_sum_handler.py"

    server = torchserve_server(store, {name: mar.name})

    status, answer = server.predict(name, {"values": [1, 2, 3.5], "tag": "ä"})
    assert status == 200, answer
    assert answer == {
        "model": name,
        "version": "1.0",
        "echo": {"values": [1, 2, 3.5], "tag": "ä"},
        "sum": 6.5,
    }

    status, answer = server.predict(name, {"values": [40, 2]}, version="1.0")
    assert (status, answer["sum"]) == (200, 42)

    status, answer = server.predict(f"{name}-absent", {"values": []})
    assert status == 404, answer

    status, described = server.describe(name)
    assert status == 200
    assert [w["status"] for w in described[0]["workers"]] == ["READY"]
