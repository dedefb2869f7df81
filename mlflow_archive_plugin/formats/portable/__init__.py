"""Portable package: a folder ``<name>/<version>/`` that loads and predicts offline.

The package holds the MLflow model under ``model/``, a ``requirements.txt`` pinned to exact
versions, ``predict.py`` (``load_model()`` and ``predict(payload)`` through
``mlflow.pyfunc``), ``signature.json`` (inputs and outputs with name, type and shape, null
for any size), an ``example-payload.json`` conforming to it, a ``model-card.md``, and the
shared ``mlflow-archive.json`` and ``checksum.txt``, so ``sha256sum -c checksum.txt`` passes
inside the package folder and importing it back loses nothing. Every container holds the
same two folders; the folder container is the package already unpacked.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import CorruptArchiveError, IntegrityError, UnsupportedError
from mlflow_archive_plugin.formats.base import Entry, Layout
from mlflow_archive_plugin.formats.mlflow import MlflowLayout, model_files
from mlflow_archive_plugin.formats.portable.card import HOOK_TAG_PREFIX, model_card
from mlflow_archive_plugin.formats.portable.files import (
    CARD_FILE,
    EXAMPLE_FILE,
    MODEL_DIR,
    PACKAGE_FILES,
    PREDICT_FILE,
    REQUIREMENTS_FILE,
    SIGNATURE_FILE,
    json_text,
    load_json_file,
    read_text,
)
from mlflow_archive_plugin.formats.portable.predict_file import (
    PREDICT_FUNCTIONS,
    PREDICT_SOURCE,
    RUN_TIMEOUT_SECONDS,
    predict_source_problems,
    run_example,
)
from mlflow_archive_plugin.formats.portable.requirements import (
    pinned_requirements,
    requirement_problems,
)
from mlflow_archive_plugin.formats.portable.signature import (
    SERVING_KEYS,
    example_payload,
    load_signature,
    payload_problems,
    signature_document,
)
from mlflow_archive_plugin.snapshot import METADATA_NAME, Snapshot
from mlflow_archive_plugin.trust.parsing import load_json

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def safe_part(value: str) -> str:
    """``value`` made a portable folder name (letters, digits, ``._-``)."""
    return _UNSAFE_CHARS.sub("_", value).strip("._-") or "model"


def package_path(snapshot: Snapshot) -> str:
    """``<name>/<version>/``: the registered model's name and version, made safe as folders.

    A model that is not registered takes its LoggedModel id as its version.
    """
    if snapshot.model_version is not None:
        version = snapshot.model_version.version
    elif snapshot.logged_model is not None and snapshot.logged_model.model_id:
        version = snapshot.logged_model.model_id
    else:
        version = "unregistered"
    return f"{safe_part(snapshot.display_name)}/{safe_part(str(version))}/"


class PortableLayout(Layout):
    """``<name>/<version>/`` with model, pinned requirements, predict.py, signature and card."""

    name = "portable"
    default_container = "folder"
    containers = ("folder", "zip", "tar.gz")

    def entry_prefix(self, snapshot: Snapshot, container) -> str:
        return package_path(snapshot)

    def file_stem(self, snapshot: Snapshot) -> str:
        name, version = package_path(snapshot).rstrip("/").split("/")
        return f"{name}-v{version}-portable"

    def check_options(self, options: dict[str, Any] | None) -> None:
        if options:
            raise UnsupportedError(
                f"the portable format takes no options (got {', '.join(sorted(options))})"
            )

    def plan(self, snapshot: Snapshot, options: dict[str, Any] | None = None) -> list[Entry]:
        self.check_options(options)
        signature = signature_document(snapshot.mlmodel)
        if signature is None:
            raise UnsupportedError(
                f"{snapshot.display_name} has no signature, which a portable package needs "
                "for signature.json and its example payload; log the model with "
                "input_example= or signature= and export that version"
            )
        snapshot.layout = self.name
        snapshot.model_path = MODEL_DIR
        example = example_payload(snapshot.model_dir, snapshot.mlmodel, signature)
        generated = {
            REQUIREMENTS_FILE: pinned_requirements(snapshot),
            PREDICT_FILE: PREDICT_SOURCE.read_text(encoding="utf-8"),
            SIGNATURE_FILE: json_text(signature),
            EXAMPLE_FILE: json_text(example),
            CARD_FILE: model_card(snapshot, signature),
        }
        return [
            *(Entry(f"{MODEL_DIR}/{path.relative_to(snapshot.model_dir).as_posix()}",
                    source=path) for path in model_files(snapshot.model_dir)),
            *(Entry(name, data=text.encode("utf-8")) for name, text in generated.items()),
        ]

    def detect(self, names: set[str], root: Path) -> bool:
        if METADATA_NAME not in names or not (root / METADATA_NAME).is_file():
            return False
        try:
            document = load_json((root / METADATA_NAME).read_bytes(), what=METADATA_NAME)
        except (CorruptArchiveError, OSError):
            return False  # the native layout reports the malformed document
        return isinstance(document, dict) and document.get("layout") == self.name

    def read(self, root: Path) -> Snapshot:
        """The package's model and registry entry; refused unless its own rules hold."""
        snapshot = MlflowLayout().read(root)
        problems = self.check(root, snapshot)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise IntegrityError(f"portable package failed verification: {problems[0]}{more}",
                                 problems)
        return snapshot

    def check(self, root: Path, snapshot: Snapshot, *, run: bool = False) -> list[str]:
        """Pinned requirements, predict.py's functions, signature.json matching the model,
        and the example payload conforming to it; with ``run``, predict.py on the example in
        a fresh Python process."""
        missing = [name for name in PACKAGE_FILES if not (root / name).is_file()]
        problems = [f"{name}: missing from the package" for name in missing]
        if REQUIREMENTS_FILE not in missing:
            problems += requirement_problems(read_text(root / REQUIREMENTS_FILE))
        if PREDICT_FILE not in missing:
            problems += predict_source_problems(root / PREDICT_FILE)
        signature = None
        if SIGNATURE_FILE not in missing:
            signature, found = load_signature(root / SIGNATURE_FILE, snapshot.mlmodel)
            problems += found
        if EXAMPLE_FILE not in missing and signature is not None:
            payload, found = load_json_file(root / EXAMPLE_FILE)
            problems += found or [f"{EXAMPLE_FILE}: {problem}"
                                  for problem in payload_problems(payload, signature)]
        if run and not problems:
            problems += run_example(root)
        return problems


__all__ = ["CARD_FILE", "EXAMPLE_FILE", "HOOK_TAG_PREFIX", "MODEL_DIR", "PACKAGE_FILES",
           "PREDICT_FILE", "PREDICT_FUNCTIONS", "REQUIREMENTS_FILE", "RUN_TIMEOUT_SECONDS",
           "SERVING_KEYS", "SIGNATURE_FILE", "PortableLayout", "example_payload", "model_card",
           "package_path", "payload_problems", "pinned_requirements", "predict_source_problems",
           "requirement_problems", "run_example", "safe_part", "signature_document"]
