# ruff: noqa: F811 - test parameters named after the fixtures imported above
"""Parsing is bounded: every JSON, YAML and Python document an archive carries is parsed
within limits of size, nesting depth and alias expansion, checked before the parser can
exhaust memory or the stack, and refused in one line naming the document and the limit.

The hostile documents are generated here: JSON nested 50,000 levels deep in
``mlflow-archive.json`` and in a ``.mar``'s ``MAR-INF/MANIFEST.json``, an oversize manifest,
a YAML "billion laughs" (80 aliases that expand to 10^9 nodes) and 20,000-deep YAML in an
``MLmodel`` and in a BentoML ``model.yaml``, and Python 100,000 operators deep in an MLSteam
hook and in a portable package's ``predict.py`` (where CPython's own parser raises
MemoryError or RecursionError). Each archive goes through the CLI's ``import``, ``verify``
and ``inspect``: a verb that reads the document refuses with one ``error:`` line naming it
and its limit; nothing under the sandbox changes and nothing is registered. One child
process under an address-space limit refuses the worst of them and reports its peak memory.
The limits themselves are tested directly on ``trust.parsing``, and the package's own source
is read to find any parse of a document outside the bounded loaders.
"""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from conftest import assert_user_error, child_env, cli, registry_census
from test_hostile import (  # noqa: F401 - fixtures, used by name
    EMPTY_REGISTRY,
    MODEL_NAME,
    Member,
    Sandbox,
    base_archive,
    base_members,
    sandbox,
    sealed,
    sha256,
    template_registry,
    write_model_dir,
)

from mlflow_archive_plugin import import_archive, inspect_archive, verify_archive
from mlflow_archive_plugin.errors import CorruptArchiveError, UnsafeArchiveError
from mlflow_archive_plugin.formats import get_layout
from mlflow_archive_plugin.snapshot import (
    METADATA_NAME,
    ModelVersionInfo,
    RegisteredModelInfo,
    Snapshot,
)
from mlflow_archive_plugin.storage import containers, location, pipeline
from mlflow_archive_plugin.storage.integrity import CHECKSUM_NAME
from mlflow_archive_plugin.trust import parsing
from mlflow_archive_plugin.trust.parsing import load_json, load_yaml, parse_python

PACKAGE = Path(__file__).resolve().parent.parent / "mlflow_archive_plugin"
MAR_MANIFEST = "MAR-INF/MANIFEST.json"
JSON_DEPTH = 50_000
YAML_DEPTH = 20_000
PYTHON_DEPTH = 100_000
DEEP_JSON_RULE = "JSON nests deeper than"
LAUGHS_RULE = f"YAML aliases expand to more than {parsing.YAML_MAX_NODES} nodes"
DEEP_YAML_RULE = f"YAML nests deeper than {parsing.MAX_DEPTH} levels"
# The pickle scanner reads MLmodel files with no aliases at all (MLflow writes none).
NO_ALIAS_RULE = "YAML uses an alias, and none are allowed in it"
DEEP_PYTHON_RULE = f"Python source nests deeper than {parsing.MAX_DEPTH} levels"
# Words that would mean a parser ran out of memory or stack before any limit said no.
EXHAUSTED = ("MemoryError", "RecursionError", "recursion", "Traceback", "unexpected")


# --------------------------------------------------------------------------- hostile documents


def nested_json(depth: int = JSON_DEPTH) -> bytes:
    """A metadata-shaped object holding arrays nested ``depth`` deep (100 KB at 50,000)."""
    return (b'{"format": "mlflow-archive", "schema_version": 1, "deep": '
            + b"[" * depth + b"]" * depth + b"}")


def billion_laughs(head: str = "") -> bytes:
    """Nine levels of ten aliases each: 80 aliases (under the alias limit), which a loader
    that copied each would expand to 10^9 scalars."""
    lines = [head.rstrip("\n")] if head else []
    lines.append("lol0: &lol0 [" + ", ".join(["lol"] * 10) + "]")
    for level in range(1, 9):
        lines.append(f"lol{level}: &lol{level} [" + ", ".join([f"*lol{level - 1}"] * 10) + "]")
    return ("\n".join(lines) + "\n").encode()


def nested_yaml(head: str = "", depth: int = YAML_DEPTH) -> bytes:
    return (head + "deep: " + "[" * depth + "]" * depth + "\n").encode()


def nested_python(function: str, depth: int = PYTHON_DEPTH) -> bytes:
    """A module defining ``function`` whose body negates 1 ``depth`` times: CPython's parser
    raises MemoryError on it before 3.12."""
    return f"def {function}(*args, **kwargs):\n    return {'-' * depth}1\n".encode()


MLMODEL_HEAD = "artifact_path: model\nflavors:\n  python_function:\n    loader_module: demo\n"
BENTO_HEAD = ("name: laughs\nversion: v1\nmodule: bentoml.mlflow\nlabels: {}\noptions: {}\n"
              "metadata: {}\ncontext: {}\napi_version: v1\ncreation_time: '2024-01-01T00:00:00'\n")


# --------------------------------------------------------------------------- archive surgery


def swap(members: list[Member], name: str, data: bytes) -> list[Member]:
    """``members`` with ``name`` holding ``data`` and ``checksum.txt`` matching again; a
    metadata document's record of the file is updated too, so only the document is hostile."""
    members = [m for m in members if m.name != CHECKSUM_NAME]
    if name != METADATA_NAME:
        members = [relisted(m, name, data) if m.name == METADATA_NAME else m for m in members]
    found = [m.name for m in members]
    members = [replace(m, data=data) if m.name == name else m for m in members]
    if name not in found:
        members.append(Member(name, data))
    return sealed(members)


def relisted(metadata: Member, name: str, data: bytes) -> Member:
    document = json.loads(metadata.data)
    for model in [document, *document.get("models", [])]:
        for record in model.get("files", []):
            if record["path"] == name:
                record.update(size=len(data), sha256=sha256(data))
    return replace(metadata, data=json.dumps(document).encode())


def write_zip(path: Path, members: list[Member]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as handle:
        for member in members:
            handle.writestr(zipfile.ZipInfo(member.name, (2024, 1, 1, 0, 0, 0)), member.data)
    return path


def write_bentomodel(path: Path, members: list[Member]) -> Path:
    import io

    with tarfile.open(path, "w:xz") as handle:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.size, info.mtime = len(member.data), 1_700_000_000
            handle.addfile(info, io.BytesIO(member.data))
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, list[Member]]:
    """An MLSteam package and a portable package written by the package's own writer (no
    MLflow server), as members, ``checksum.txt`` left out."""
    root = tmp_path_factory.mktemp("bounded-written")
    model_dir = write_model_dir(root / "src" / "model")
    signature = {"inputs": json.dumps([{"type": "double", "name": "x", "required": True}]),
                 "outputs": json.dumps([{"type": "double", "required": True}])}
    found = {}
    for layout in ("mlarchive", "portable"):
        snapshot = Snapshot(
            model_dir=model_dir,
            mlmodel={"artifact_path": "model", "mlflow_version": "2.0.0", "signature": signature,
                     "flavors": {"python_function": {"loader_module": "demo"}}},
            registered_model=RegisteredModelInfo(name=MODEL_NAME),
            model_version=ModelVersionInfo(version="1"),
        )
        target = root / f"{layout}.zip"
        pipeline.write_archive(snapshot, get_layout(layout), containers.get_container("zip"),
                               location.resolve(target), show_progress=False)
        prefix = get_layout(layout).entry_prefix(snapshot, None)  # portable: name/version/
        with zipfile.ZipFile(target) as handle:
            found[layout] = [Member(info.filename.removeprefix(prefix), handle.read(info))
                             for info in handle.infolist()
                             if info.filename.removeprefix(prefix) != CHECKSUM_NAME]
    return found


def foreign_mar(manifest: bytes) -> list[Member]:
    """A ``.mar`` as torch-model-archiver writes one: no metadata document of ours."""
    return [Member(MAR_MANIFEST, manifest), Member("model.pt", b"not really a model\n"),
            Member("handler.py", b"def handle(data, context):\n    return data\n")]


def foreign_bento(model_yaml: bytes) -> list[Member]:
    return [Member("model.yaml", model_yaml),
            Member("mlflow_model/MLmodel", MLMODEL_HEAD.encode()),
            Member("mlflow_model/weights.bin", random.Random(3).randbytes(512))]


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """A hostile archive and what each verb does with it.

    ``parts`` are in the one-line refusal of every verb in ``refused_by`` (the document and
    its limit). ``inspect`` parses only the metadata document and, through the pickle scanner,
    each MLmodel (which it lists as unreadable, with the limit, and goes on); ``verify`` parses
    only our own formats' documents, so a foreign archive fails it for having no metadata.
    """

    id: str
    build: Callable[[Sandbox, dict[str, list[Member]]], Path]
    parts: tuple[str, ...]
    refused_by: frozenset[str] = frozenset({"import"})
    inspect_lists: str = ""  # the limit inspect's pickle listing gives for the document
    import_parts: tuple[str, ...] = field(default=())  # more words import's line must hold


ALL_VERBS = frozenset({"import", "verify", "inspect"})
OUR_VERBS = frozenset({"import", "verify"})

CASES = [
    Case("metadata-deep-json",
         lambda sb, w: write_zip(sb.archives / "deep.zip",
                                 swap(sb.base, METADATA_NAME, nested_json())),
         (METADATA_NAME, DEEP_JSON_RULE), ALL_VERBS,
         import_parts=(f"{DEEP_JSON_RULE} {parsing.MAX_DEPTH} levels",)),
    Case("mar-manifest-deep-json",
         lambda sb, w: write_zip(sb.archives / "deep.mar", foreign_mar(
             b'{"model": {"modelName": "m", "modelVersion": "1", "x": '
             + b"{}".join([b"["] * JSON_DEPTH) + b"]" * JSON_DEPTH + b"}}")),
         (MAR_MANIFEST, f"{DEEP_JSON_RULE} {parsing.MAX_DEPTH} levels")),
    Case("mar-manifest-oversize-json",
         lambda sb, w: write_zip(sb.archives / "big.mar", foreign_mar(json.dumps({
             "model": {"modelName": "m", "modelVersion": "1",
                       "padding": random.Random(5).randbytes(800_000).hex()}}).encode())),
         (MAR_MANIFEST, "JSON larger than 1048576 bytes")),
    Case("mlmodel-billion-laughs",
         lambda sb, w: write_zip(sb.archives / "laughs.zip",
                                 swap(sb.base, "model/MLmodel", billion_laughs(MLMODEL_HEAD))),
         ("model/MLmodel", LAUGHS_RULE), OUR_VERBS, inspect_lists=NO_ALIAS_RULE),
    Case("mlmodel-deep-yaml",
         lambda sb, w: write_zip(sb.archives / "deep.zip",
                                 swap(sb.base, "model/MLmodel", nested_yaml(MLMODEL_HEAD))),
         ("model/MLmodel", DEEP_YAML_RULE), OUR_VERBS, inspect_lists=DEEP_YAML_RULE),
    Case("bentoml-model-yaml-billion-laughs",
         lambda sb, w: write_bentomodel(sb.archives / "laughs.bentomodel",
                                        foreign_bento(billion_laughs(BENTO_HEAD))),
         ("model.yaml", LAUGHS_RULE)),
    Case("bentoml-model-yaml-deep-yaml",
         lambda sb, w: write_bentomodel(sb.archives / "deep.bentomodel",
                                        foreign_bento(nested_yaml(BENTO_HEAD))),
         ("model.yaml", DEEP_YAML_RULE)),
    Case("mlsteam-hook-deep-python",
         lambda sb, w: write_zip(sb.archives / "deep.mlarchive", swap(
             w["mlarchive"], "hooks/load.py", nested_python("load"))),
         ("hooks/load.py", DEEP_PYTHON_RULE), OUR_VERBS),
    Case("portable-predict-deep-python",
         lambda sb, w: write_zip(sb.archives / "deep.zip", swap(
             w["portable"], "predict.py", nested_python("predict"))),
         ("predict.py", DEEP_PYTHON_RULE), OUR_VERBS),
]
CASE_IDS = [case.id for case in CASES]


def missing(parts: tuple[str, ...], line: str) -> list[str]:
    return [part for part in parts if part not in line]


def not_exhausted(proc: subprocess.CompletedProcess) -> None:
    found = [word for word in EXHAUSTED if word in proc.stderr or word in proc.stdout]
    assert found == [], f"exit={proc.returncode}\n{proc.stdout}\n{proc.stderr}"


# --------------------------------------------------------------------------- every case, by CLI


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cli_import_verify_and_inspect_refuse_the_document_in_one_line(sandbox, written, case):
    path = case.build(sandbox, written)
    env = child_env(TMPDIR=str(sandbox.tmp))
    with sandbox.unchanged():
        imported = cli("import", str(path), "--tracking-uri", sandbox.registry_uri, "-q",
                       cwd=sandbox.cwd, env=env)
        verified = cli("verify", str(path), "-q", cwd=sandbox.cwd, env=env)
        inspected = cli("inspect", str(path), cwd=sandbox.cwd, env=env)
    assert registry_census(sandbox.registry_uri) == EMPTY_REGISTRY
    line = assert_user_error(imported)
    assert missing(case.parts + case.import_parts, line) == [], line
    for verb, proc in (("verify", verified), ("inspect", inspected)):
        not_exhausted(proc)
        if verb in case.refused_by:
            line = assert_user_error(proc)
            assert missing(case.parts, line) == [], f"{verb}: {line}"
    if "verify" not in case.refused_by:
        # A foreign archive: verify finds no metadata document (nor checksum.txt) to check
        # its files against, and says so, one error line each.
        lines = [line for line in verified.stderr.splitlines() if line.strip()]
        assert verified.returncode == 1 and lines, verified.stderr
        assert all(line.startswith("error: ") for line in lines), verified.stderr
        assert any(METADATA_NAME in line for line in lines), verified.stderr
    if "inspect" not in case.refused_by:
        assert inspected.returncode == 0, inspected.stderr
        listed = [line for line in inspected.stdout.splitlines()
                  if line.strip().startswith(f"pickle: {case.parts[0]}")]
        if case.inspect_lists:
            assert len(listed) == 1 and case.inspect_lists in listed[0], inspected.stdout
        else:
            assert listed == [], inspected.stdout


@pytest.mark.parametrize("case", [c for c in CASES if c.refused_by == OUR_VERBS or
                                  c.refused_by == ALL_VERBS], ids=lambda c: c.id)
def test_api_refuses_with_unsafe_archive_error(sandbox, written, case):
    """Through the API: import and verify raise UnsafeArchiveError (or verify reports the
    line), so a caller can tell an unsafe archive from a damaged one."""
    path = case.build(sandbox, written)
    with sandbox.unchanged(), pytest.raises(UnsafeArchiveError) as caught:
        import_archive(path, tracking_uri=sandbox.registry_uri)
    assert "\n" not in str(caught.value)
    assert missing(case.parts, str(caught.value)) == [], str(caught.value)
    try:
        report = verify_archive(path)
    except UnsafeArchiveError as exc:
        assert missing(case.parts, str(exc)) == [], str(exc)
    else:
        assert not report.ok and len(report.problems) == 1, report.problems
        assert missing(case.parts, report.problems[0]) == [], report.problems
    assert registry_census(sandbox.registry_uri) == EMPTY_REGISTRY


def test_the_written_packages_import_before_a_document_is_made_hostile(sandbox, written):
    """The base of the MLSteam and portable cases is sound: each refusal is due to the one
    document swapped in."""
    for layout in ("mlarchive", "portable"):
        path = write_zip(sandbox.archives / f"{layout}.zip", sealed(written[layout]))
        report = verify_archive(path)
        assert report.ok, (layout, report.problems)


def test_inspect_lists_the_mlmodel_the_scanner_could_not_read(sandbox, written):
    path = CASES[CASE_IDS.index("mlmodel-billion-laughs")].build(sandbox, written)
    info = inspect_archive(path)
    [finding] = [f for f in info.pickles if f["path"] == "model/MLmodel"]
    assert NO_ALIAS_RULE in finding["error"], finding


# --------------------------------------------------------------------------- memory


_MEASURE = r"""
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import mlflow  # noqa: F401 - the baseline is the package as a user has it loaded
import mlflow_archive_plugin
from mlflow_archive_plugin import ArchiveError, import_archive, inspect_archive, verify_archive
import os
with open("/proc/self/statm") as handle:  # resident pages now, not the high-water mark
    baseline = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
outcomes = []
for path in sys.argv[3:]:
    for verb in ("import", "verify", "inspect"):
        try:
            if verb == "import":
                import_archive(path, tracking_uri=sys.argv[2])
                text = "imported"
            elif verb == "verify":
                text = " | ".join(verify_archive(path, progress=False).problems)
            else:
                text = " | ".join(f["error"] or "" for f in inspect_archive(path).pickles)
            outcome = "completed"
        except ArchiveError as exc:
            outcome, text = "raised", f"{type(exc).__name__}: {exc}"
        except MemoryError:
            outcome, text = "exhausted", "MemoryError"
        outcomes.append([verb, outcome, text])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_kib": baseline, "peak_kib": peak, "outcomes": outcomes}))
"""
ADDRESS_SPACE = 1536 * 1024**2
MEASURED = {  # case: what import, verify and inspect each do, and the words they say it with
    "mlmodel-billion-laughs": [("raised", LAUGHS_RULE), ("completed", LAUGHS_RULE),
                               ("completed", NO_ALIAS_RULE)],
    "metadata-deep-json": [("raised", DEEP_JSON_RULE)] * 3,
    "mlsteam-hook-deep-python": [("raised", DEEP_PYTHON_RULE)] * 2 + [("completed", "")],
}


def test_the_worst_documents_are_refused_under_a_1_5_gib_address_space_limit(sandbox, written):
    """Refusing a billion-laughs MLmodel, 50,000-deep metadata JSON and a 100,000-deep
    MLSteam hook, each through import, verify and inspect, in a child whose address space is
    capped (RLIMIT_AS, 1.5 GiB: room for Python, MLflow and the package, none for an exploding
    parser, whose MemoryError would show in its report as "exhausted").

    How much memory a refusal adds is measured, not asserted here (timed tests are noisy):
    ``benchmarks/bench_bounded.py`` (``make bench``) reports the peak of each parser's refusal
    against a benign document, as medians of several fresh children. This test prints the
    child's resident high-water mark over its loaded baseline for the record only.
    """
    paths = [CASES[CASE_IDS.index(name)].build(sandbox, written) for name in MEASURED]
    env = child_env(TMPDIR=str(sandbox.tmp), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(ADDRESS_SPACE), sandbox.registry_uri,
         *map(str, paths)],
        cwd=sandbox.cwd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["outcomes"]) == 3 * len(MEASURED), report
    outcomes = iter(report["outcomes"])
    for name, expected in MEASURED.items():
        for (outcome, words), (verb, got, text) in zip(expected, outcomes, strict=False):
            assert (got, words in text) == (outcome, True), (name, verb, got, text)
    added = (report["peak_kib"] - report["baseline_kib"]) * 1024
    print(f"baseline {report['baseline_kib'] // 1024} MB, added {added / 1024**2:.1f} MB")
    assert registry_census(sandbox.registry_uri) == EMPTY_REGISTRY


# --------------------------------------------------------------------------- the loaders' limits


def one_line_naming(exc: BaseException, what: str) -> str:
    message = str(exc)
    assert "\n" not in message and what in message, message
    return message


def test_load_json_accepts_the_depth_limit_and_refuses_one_more():
    assert load_json("[" * 100 + "]" * 100, what="doc.json") == eval("[" * 100 + "]" * 100)
    with pytest.raises(UnsafeArchiveError) as caught:
        load_json("[" * 101 + "]" * 101, what="doc.json")
    assert "JSON nests deeper than 100 levels" in one_line_naming(caught.value, "doc.json")
    assert caught.value.reason == "JSON nests deeper than 100 levels"


def test_load_json_does_not_count_brackets_inside_strings():
    text = json.dumps({"s": "[{" * 5000, "t": 'quote \\" [[[['})
    assert load_json(text, what="doc.json")["s"] == "[{" * 5000


def test_load_json_refuses_a_document_past_its_size_before_decoding():
    with pytest.raises(UnsafeArchiveError) as caught:
        load_json(b" " * 1001 + b"{}", what="doc.json", max_bytes=1000)
    assert "JSON larger than 1000 bytes" in one_line_naming(caught.value, "doc.json")
    # A str is measured in UTF-8, not in characters.
    with pytest.raises(UnsafeArchiveError):
        load_json('"' + "\u00e9" * 600 + '"', what="doc.json", max_bytes=1000)
    assert load_json('"' + "\u00e9" * 400 + '"', what="doc.json", max_bytes=1000)


def test_load_json_says_which_document_is_not_json():
    with pytest.raises(CorruptArchiveError) as caught:
        load_json(b'{"a": ', what="doc.json")
    assert "doc.json is not valid JSON" in one_line_naming(caught.value, "doc.json")
    with pytest.raises(CorruptArchiveError):
        load_json(b"\xff\xfe\x00", what="doc.json")
    assert load_json('{"a": 1}'.encode("utf-16"), what="doc.json") == {"a": 1}


def test_load_yaml_counts_what_aliases_expand_to():
    with pytest.raises(UnsafeArchiveError) as caught:
        load_yaml(billion_laughs(), what="doc.yaml")
    assert LAUGHS_RULE in one_line_naming(caught.value, "doc.yaml")
    # A few aliases that expand to little load as PyYAML loads them.
    assert load_yaml("a: &a [1, 2]\nb: *a\n", what="doc.yaml") == {"a": [1, 2], "b": [1, 2]}


def test_load_yaml_limits_the_number_of_aliases():
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 100) + "]\n"
    assert len(load_yaml(text, what="doc.yaml")["b"]) == 100
    with pytest.raises(UnsafeArchiveError) as caught:
        load_yaml(text.replace("]", ", *a]"), what="doc.yaml")
    assert "YAML uses more than 100 aliases" in one_line_naming(caught.value, "doc.yaml")
    with pytest.raises(UnsafeArchiveError) as caught:
        load_yaml("a: &a 1\nb: *a\n", what="doc.yaml", max_aliases=0)
    assert "none are allowed" in one_line_naming(caught.value, "doc.yaml")


def test_load_yaml_refuses_an_alias_inside_the_node_it_names():
    with pytest.raises(UnsafeArchiveError) as caught:
        load_yaml("a: &a [1, *a]\n", what="doc.yaml")
    assert "inside the node it repeats" in one_line_naming(caught.value, "doc.yaml")


def test_load_yaml_limits_depth_also_through_an_alias():
    assert load_yaml(nested_yaml(depth=99), what="doc.yaml")
    with pytest.raises(UnsafeArchiveError) as caught:
        load_yaml(nested_yaml(depth=100), what="doc.yaml")  # under deep: 101 levels
    assert DEEP_YAML_RULE in one_line_naming(caught.value, "doc.yaml")
    # Fifty levels named once and repeated fifty levels down are a hundred and one.
    text = "a: &a " + "[" * 50 + "]" * 50 + "\nb: " + "[" * 50 + "*a" + "]" * 50 + "\n"
    with pytest.raises(UnsafeArchiveError):
        load_yaml(text, what="doc.yaml")


def test_load_yaml_builds_plain_data_only():
    with pytest.raises(CorruptArchiveError) as caught:
        load_yaml("x: !!python/object/apply:os.system ['true']\n", what="doc.yaml")
    assert "doc.yaml is not valid YAML" in one_line_naming(caught.value, "doc.yaml")
    with pytest.raises(CorruptArchiveError):
        load_yaml("a: [1, 2\n", what="doc.yaml")
    with pytest.raises(UnsafeArchiveError):
        load_yaml(b"a: 1\n" * 300, what="doc.yaml", max_bytes=1000)


def test_parse_python_parses_a_hook_and_refuses_deep_expressions():
    tree = parse_python(b"def load(path):\n    return [x + 1 for x in range(3)]\n",
                        what="hooks/load.py")
    assert [node.name for node in tree.body] == ["load"]
    for source in (nested_python("load", 2000), b"x = " + b"(" * 150 + b"1" + b")" * 150,
                   b"x = " + b"not " * 5000 + b"1", b"if x:\n" + b"".join(
                       b" " * i + b"if x:\n" for i in range(1, 120)) + b" " * 120 + b"pass\n"):
        with pytest.raises(UnsafeArchiveError) as caught:
            parse_python(source, what="hooks/load.py")
        assert DEEP_PYTHON_RULE in one_line_naming(caught.value, "hooks/load.py")


def test_parse_python_says_which_file_is_not_python():
    with pytest.raises(CorruptArchiveError) as caught:
        parse_python(b"def load(:\n", what="hooks/load.py")
    assert "hooks/load.py is not valid Python" in one_line_naming(caught.value, "hooks/load.py")
    with pytest.raises(UnsafeArchiveError):
        parse_python(b"#" * 2000, what="hooks/load.py", max_bytes=1000)


def test_snapshot_from_json_without_a_loader_still_refuses_deep_json_in_one_line():
    """The API's verify and inspect parse the metadata through Snapshot.from_json without the
    bounded loader; the standard parser's recursion limit still ends in one line."""
    with pytest.raises(UnsafeArchiveError) as caught:
        Snapshot.from_json(nested_json(), Path("."))
    assert DEEP_JSON_RULE in one_line_naming(caught.value, METADATA_NAME)


# --------------------------------------------------------------------------- every parse site

PARSERS = {("json", "loads"), ("json", "load"), ("yaml", "safe_load"), ("yaml", "load"),
           ("yaml", "full_load"), ("yaml", "unsafe_load"), ("ast", "parse")}
# Parses left to the standard parsers, each for a reason (module, function): what they read
# is not a document an archive carries, or was just parsed within the limits.
UNBOUNDED = {
    ("cli.py", "_parse_storage_options"): "a command-line --storage-option value",
    ("plugins/pyfunc.py", "serving_payload"): "the caller's own prediction input",
    ("plugins/flavor.py", "_json_safe"): "json.loads(json.dumps(...)) of a value in memory",
    ("snapshot/document.py", "from_json"): "the fallback without a loader: a RecursionError "
                                           "becomes one line",
    ("snapshot/metrics.py", "_parsed"): "one line of the metric history, at most 4 KiB (checked "
                                        "first); a RecursionError becomes one line",
    # export: the source registry's records, not an archive's
    ("formats/mlarchive/manifest.py", "_fields"): "the source model's signature, on export",
    ("formats/mlarchive/manifest.py", "_tag_json"): "the source registry's tags, on export",
    ("formats/portable/signature.py", "_logged_example"): "the source model's input example, "
                                                          "on export",
    ("formats/portable/predict_file.py", "run_example"): "the verdict our runner wrote (only "
                                                         "with --run)",
    # The entry points may not import trust (tests/test_architecture.py); each of these runs
    # after storage.pipeline.read_snapshot, whose layout has just parsed the same file of the
    # same extraction within the limits (MLmodel, hooks, predict.py, manifests).
    ("plugins/pyfunc.py", "_defines"): "hooks/*.py and predict.py, parsed by the layout",
    ("plugins/flavor.py", "_read_consumer_manifest"): "manifests, parsed by the layout",
    # the user's own MLFLOW_ARCHIVE_STORAGE_OPTIONS, not a document of an archive
    ("plugins/artifact_uris.py", "storage_options"): "the user's environment variable",
}
# Files copied into archives and run where this package is not installed.
STANDALONE = ("formats/mlsteam/", "formats/portable_predict.py", "formats/mar_handler.py")
# Modules whose parses other work bounds (issue 15 items 1 and 5), and the loaders themselves.
ELSEWHERE = ("plugins/artifact_repo.py", "plugins/deployment.py", "mlflow_side/source.py",
             "mlflow_side/tracking.py", "storage/location.py", "trust/signing.py",
             "trust/parsing.py", "api.py")


class _Calls(ast.NodeVisitor):
    def __init__(self, rel: str) -> None:
        self.rel, self.function, self.sites = rel, "<module>", set()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and (func.value.id, func.attr) in PARSERS):
            self.sites.add((self.rel, self.function, f"{func.value.id}.{func.attr}"))
        self.generic_visit(node)


def parse_sites() -> list[tuple[str, str, str]]:
    """Every call of a standard parser in the package: (file, innermost function, call)."""
    sites: set[tuple[str, str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        visitor = _Calls(rel)
        visitor.visit(ast.parse(path.read_bytes(), filename=rel))
        sites |= visitor.sites
    return sorted(sites)


def test_every_parse_of_an_archive_document_goes_through_the_bounded_loaders():
    """A new json.loads / yaml.safe_load / ast.parse of an archive's document fails here
    until it uses trust.parsing, or is listed above with its reason."""
    sites = parse_sites()
    found = [site for site in sites if not site[0].startswith(STANDALONE + ELSEWHERE)
             and (site[0], site[1]) not in UNBOUNDED]
    assert found == [], found
    gone = [key for key in UNBOUNDED if not any(site[:2] == key for site in sites)]
    assert gone == [], "listed parses that are gone: strike them off"


def test_the_site_finder_finds_a_parse():
    assert ("trust/parsing.py", "load_json", "json.loads") in parse_sites()
    assert any(site[:2] == ("formats/mlarchive/manifest.py", "_fields") for site in parse_sites())


def test_copied_files_never_import_the_package():
    """Hooks, handler and predict.py run inside archives without this package, so they cannot
    use its loaders: they parse only their caller's payloads, with the standard library."""
    paths = [p for prefix in STANDALONE for p in sorted(PACKAGE.glob(prefix + "**/*.py")
                                                        if prefix.endswith("/") else [
                                                            PACKAGE / prefix])]
    assert len(paths) >= 4, paths
    for path in paths:
        for node in ast.walk(ast.parse(path.read_bytes())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith("mlflow_archive_plugin")], path


def test_the_entry_points_read_an_inner_mlmodel_within_the_limits(tmp_path):
    """The flavor reads the MLmodel of a model inside an archive (a foreign .mar's) through
    the MLflow side's bounded reader: a billion laughs is refused, a plain one read."""
    from mlflow_archive_plugin.plugins.pyfunc import read_mlmodel

    hostile = tmp_path / "MLmodel"
    hostile.write_bytes(billion_laughs(MLMODEL_HEAD))
    with pytest.raises(UnsafeArchiveError, match=LAUGHS_RULE):
        read_mlmodel(hostile)
    plain = tmp_path / "plain" / "MLmodel"
    plain.parent.mkdir()
    plain.write_bytes(MLMODEL_HEAD.encode())
    assert read_mlmodel(plain)["flavors"] == {"python_function": {"loader_module": "demo"}}
    plain.write_bytes(b"- not\n- a mapping\n")
    assert read_mlmodel(plain) == {}


def test_verify_and_inspect_parse_the_metadata_within_the_depth_limit(sandbox, written):
    """Not at Python's own recursion limit: the same 100 levels as import."""
    path = CASES[CASE_IDS.index("metadata-deep-json")].build(sandbox, written)
    for call in (verify_archive, inspect_archive):
        with pytest.raises(UnsafeArchiveError, match=f"deeper than {parsing.MAX_DEPTH} levels"):
            call(path)
