"""``hooks/``: the check that a package's hooks define the functions MLSteam calls (parsed,
never run or imported), a hand-written package's own hooks kept as ``mlsteam.hook.<path>``
tags and written back on export, and the generated ``hooks/load.py``."""

from __future__ import annotations

import ast
import pprint
import re
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import CorruptArchiveError
from mlflow_archive_plugin.formats.mlarchive.manifest import (
    HOOKS_DIR,
    MODELS_DIR,
    TAG_PREFIX,
    manifest_name,
    manifest_version,
    member_tags,
)
from mlflow_archive_plugin.formats.mlsteam import load as load_hook
from mlflow_archive_plugin.snapshot import Snapshot
from mlflow_archive_plugin.trust.parsing import parse_python

# Each hook the spec names, with the function MLSteam's SDK calls in it.
HOOK_FUNCTIONS = {"load.py": "load", "predict.py": "predict"}
# A hand-written package's hook file, by its path under hooks/, holding the file's text.
HOOK_TAG_PREFIX = f"{TAG_PREFIX}hook."
# MLflow keeps a model version tag value of up to 100,000 characters and a key of up to 250.
_HOOK_TAG_VALUE_MAX = 100_000
_TAG_KEY_MAX = 250
# What a tag key may hold on any MLflow server (one on Windows refuses ':').
_HOOK_PATH = re.compile(r"^[A-Za-z0-9_.\- /]+$")
_CONFIG_LINE = re.compile(r"^CONFIG = .*$", re.MULTILINE)


def hook_problems(root: Path) -> list[str]:
    """Missing hooks, and hooks without the function MLSteam calls, found by parsing them
    (never by running or importing them). A hook past the parser's limits (size, nesting) is
    refused: :class:`UnsafeArchiveError` from :func:`parse_python`."""
    problems = []
    for hook, function in HOOK_FUNCTIONS.items():
        name = f"{HOOKS_DIR}/{hook}"
        path = root / HOOKS_DIR / hook
        if not path.is_file():
            problems.append(f"{name} is missing; the spec needs it, with a top-level "
                            f"def {function}(...)")
            continue
        try:
            tree = parse_python(path.read_bytes(), what=name)
        except CorruptArchiveError as exc:
            problems.append(str(exc))
            continue
        if not any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                   and node.name == function for node in tree.body):
            problems.append(f"{name} has no top-level def {function}(...), which MLSteam calls")
    return problems


# --------------------------------------------------------------------------- kept hooks


def hook_tags(root: Path) -> tuple[dict[str, str], str | None]:
    """Every file under ``hooks/`` as an ``mlsteam.hook.<path>`` tag holding its text, so that
    an export writes the package's own hooks back; or no tags and why they cannot be kept (a
    file that is not UTF-8 text, too long for a tag, or named as no tag key can be). The
    files are only read, never run or imported."""
    hooks = root / HOOKS_DIR
    tags = {}
    for path in sorted(path for path in hooks.rglob("*") if path.is_file()):
        name = path.relative_to(hooks).as_posix()
        where = f"{HOOKS_DIR}/{name}"
        if not _keepable_hook_path(name):
            return {}, (f"{where} has a name no MLflow tag key can hold (letters, digits and "
                        "'_-. /' only)")
        text, problem = _hook_text(path)
        if problem:
            return {}, f"{where} {problem}"
        tags[HOOK_TAG_PREFIX + name] = text
    return tags, None


def _hook_text(path: Path) -> tuple[str, str | None]:
    """A hook file's text, or why a tag cannot hold it."""
    too_long = f"is longer than the {_HOOK_TAG_VALUE_MAX:,} characters an MLflow tag holds"
    # UTF-8 spends at most 4 bytes on a character: a larger file cannot fit in a tag.
    if path.stat().st_size > 4 * _HOOK_TAG_VALUE_MAX:
        return "", too_long
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "", "is not UTF-8 text"
    if "\x00" in text:
        return "", "is not text (it holds a NUL character)"
    return text, too_long if len(text) > _HOOK_TAG_VALUE_MAX else None


def kept_hooks(member: Snapshot) -> dict[str, bytes]:
    """The hook files an imported hand-written package came with, by path under ``hooks/``;
    empty when none were kept, or when the tags lack a hook the spec needs or name a path
    outside ``hooks/`` (tags can be edited in the registry)."""
    files = {key.removeprefix(HOOK_TAG_PREFIX): text.encode("utf-8")
             for key, text in member_tags(member).items() if key.startswith(HOOK_TAG_PREFIX)}
    if not set(HOOK_FUNCTIONS) <= set(files) or not all(map(_keepable_hook_path, files)):
        return {}
    return files


def _keepable_hook_path(name: str) -> bool:
    """Whether a path under ``hooks/`` makes a tag key MLflow accepts and, read back from
    one, names a file inside ``hooks/``."""
    return (bool(_HOOK_PATH.match(name)) and len(HOOK_TAG_PREFIX + name) <= _TAG_KEY_MAX
            and all(part not in ("", ".", "..") for part in name.split("/")))


def hooks_written(snapshot: Snapshot) -> dict[str, bytes]:
    """The kept hooks an export writes instead of generated ones: a single model's, and not
    when encrypting (the kept hooks cannot decrypt; the generated ``load.py`` does)."""
    if snapshot.bundle or snapshot.encryption is not None:
        return {}
    return kept_hooks(snapshot)


# --------------------------------------------------------------------------- generated load.py


def hook_keys(members: list[Snapshot]) -> list[str]:
    """The names ``load()`` returns the models under: the manifest's, made unique."""
    keys: list[str] = []
    for member in members:
        key = manifest_name(member)
        if key in keys:
            key = f"{key}:{manifest_version(member)}"
        if key in keys:
            key = member.model_path.rsplit("/", 1)[-1]
        keys.append(key)
    return keys


def render_load_hook(snapshot: Snapshot, manifest: dict[str, Any], keys: list[str]) -> bytes:
    """``hooks/load.py``: the hook template with this package's models and encryption."""
    config = {
        "models": [
            {
                "name": key,
                "path": "." if member.model_path == MODELS_DIR
                else member.model_path.removeprefix(f"{MODELS_DIR}/"),
                "enc_model_cleanup": entry["enc_model_cleanup"],
                "enc_model_cleanup_files": entry["enc_model_cleanup_files"],
            }
            for key, member, entry in zip(keys, snapshot.members, manifest["models"],
                                          strict=True)
        ],
        "encryption": snapshot.encryption,
    }
    template = Path(load_hook.__file__).read_text(encoding="utf-8")
    literal = pprint.pformat(config, width=96, sort_dicts=False)
    source, count = _CONFIG_LINE.subn(lambda _: f"CONFIG = {literal}", template, count=1)
    if count != 1:
        raise RuntimeError("the load hook template has no CONFIG line")
    return source.encode("utf-8")
