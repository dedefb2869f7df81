"""checksum.txt: sha256sum text format, strict parsing, and one line per difference."""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from mlflow_archive_plugin import formats as layouts
from mlflow_archive_plugin.errors import CorruptArchiveError
from mlflow_archive_plugin.snapshot import ModelVersionInfo, RegisteredModelInfo, Snapshot
from mlflow_archive_plugin.storage import containers, location
from mlflow_archive_plugin.storage import pipeline as archive
from mlflow_archive_plugin.storage.integrity import (
    CHECKSUM_NAME,
    CHUNK_SIZE,
    FileRecord,
    compare,
    content_digest,
    copy_and_hash,
    hash_stream,
    parse_checksums,
    render_checksums,
)

HASH_A = hashlib.sha256(b"a").hexdigest()
HASH_B = hashlib.sha256(b"b").hexdigest()


def record(path: str, data: bytes) -> FileRecord:
    return FileRecord.of_bytes(path, data)


def records_by_path(*items: FileRecord) -> dict[str, FileRecord]:
    return {item.path: item for item in items}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("source") / "model"
    root.mkdir()
    (root / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
    (root / "weights.bin").write_bytes(random.Random(99).randbytes(1 << 20))
    (root / "notes.txt").write_text("compressible text\n" * 5000)
    return root


def write(model_dir: Path, container: str, target: Path) -> archive.Written:
    snapshot = Snapshot(
        model_dir=model_dir,
        mlmodel={"flavors": {}},
        registered_model=RegisteredModelInfo(name="demo"),
        model_version=ModelVersionInfo(version="1"),
    )
    return archive.write_archive(
        snapshot,
        layouts.get_layout("mlflow"),
        containers.get_container(container),
        location.resolve(target),
        show_progress=False,
    )


def sha256sum_check(folder: Path) -> subprocess.CompletedProcess:
    tool = shutil.which("sha256sum")
    if tool is None:
        pytest.skip("sha256sum (coreutils) is not installed")
    return subprocess.run(
        [tool, "-c", CHECKSUM_NAME], cwd=folder, capture_output=True, text=True, check=False
    )


# --------------------------------------------------------------------------- hashing


def test_copy_and_hash_copies_every_byte_and_returns_its_sha256():
    data = random.Random(1).randbytes(CHUNK_SIZE * 2 + 17)
    sink = io.BytesIO()
    seen: list[int] = []
    size, digest = copy_and_hash(io.BytesIO(data), sink, seen.append)
    assert sink.getvalue() == data
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert sum(seen) == len(data)


def test_hash_stream_returns_size_and_sha256():
    data = b"x" * (CHUNK_SIZE + 1)
    assert hash_stream(io.BytesIO(data)) == (len(data), hashlib.sha256(data).hexdigest())


def test_content_digest_is_the_sha256_of_checksum_txt():
    data = render_checksums([record("a", b"a")])
    assert content_digest(data) == hashlib.sha256(data).hexdigest()


def test_content_digest_is_the_same_in_every_container(model_dir, tmp_path):
    digests = {
        name: write(model_dir, name, tmp_path / f"demo-{name}").digest
        for name in ("zip", "tar.gz", "folder")
    }
    assert len(set(digests.values())) == 1, digests


# --------------------------------------------------------------------------- render / parse


def test_render_writes_sha256sum_text_lines_sorted_by_path():
    data = render_checksums([record("b/x", b"b"), record("a", b"a")])
    assert data == f"{HASH_A}  a\n{HASH_B}  b/x\n".encode()


def test_render_then_parse_returns_every_path_and_digest():
    items = [record("model/MLmodel", b"m"), record("my file.txt", b"s"), record("ünï/çödé", b"u")]
    assert parse_checksums(render_checksums(items)) == {r.path: r.sha256 for r in items}


@pytest.mark.parametrize(
    "name",
    ["a\u2028b", "a\x85b", "a\x0cb", "a\rb"],
    ids=["line-separator", "next-line", "form-feed", "carriage-return"],
)
def test_a_name_render_accepts_parses_back_unchanged(name):
    """Names legal on Linux that str.splitlines() would cut in two."""
    items = [record(f"model/{name}", b"x"), record("model/MLmodel", b"m")]
    try:
        data = render_checksums(items)
    except CorruptArchiveError:
        return  # refusing the name when writing is an acceptable answer too
    assert parse_checksums(data) == {r.path: r.sha256 for r in items}


@pytest.mark.parametrize("name", ["a\nb", "a\\b"], ids=["newline", "backslash"])
def test_render_refuses_names_sha256sum_would_escape(name):
    with pytest.raises(CorruptArchiveError, match="rename"):
        render_checksums([record(name, b"x")])


def test_parse_accepts_the_binary_mode_marker():
    assert parse_checksums(f"{HASH_A} *a.bin\n".encode()) == {"a.bin": HASH_A}


def test_parse_skips_blank_lines():
    assert parse_checksums(f"\n{HASH_A}  a\n\n".encode()) == {"a": HASH_A}


@pytest.mark.parametrize(
    "line",
    [
        f"{HASH_A[:-1]}  a",
        f"{HASH_A}0  a",
        f"{'g' * 64}  a",
        f"{HASH_A} a",
        f"{HASH_A}  ",
        f"{HASH_A}",
        "a  " + HASH_A,
        "not a checksum line",
    ],
    ids=[
        "short-hash",
        "long-hash",
        "not-hex",
        "one-space",
        "no-path",
        "hash-only",
        "reversed",
        "prose",
    ],
)
def test_parse_refuses_a_malformed_line_naming_its_number(line):
    data = f"{HASH_B}  b\n{line}\n".encode()
    with pytest.raises(CorruptArchiveError, match="line 2") as caught:
        parse_checksums(data)
    assert "\n" not in str(caught.value)


def test_parse_refuses_bytes_that_are_not_utf8():
    with pytest.raises(CorruptArchiveError, match="UTF-8"):
        parse_checksums(f"{HASH_A}  a".encode() + b"\xff\n")


def test_parse_refuses_a_path_listed_twice():
    data = f"{HASH_A}  model/x\n{HASH_B}  model/x\n".encode()
    with pytest.raises(CorruptArchiveError, match="model/x") as caught:
        parse_checksums(data)
    assert "twice" in str(caught.value)


# --------------------------------------------------------------------------- compare


def test_compare_of_matching_files_reports_nothing():
    expected = {"a": HASH_A, "b": HASH_B}
    assert compare(expected, records_by_path(record("a", b"a"), record("b", b"b"))) == []


def test_compare_reports_a_missing_file_on_one_line_naming_it():
    problems = compare({"a": HASH_A, "gone.bin": HASH_B}, records_by_path(record("a", b"a")))
    assert len(problems) == 1
    assert problems[0].startswith("gone.bin:")
    assert "missing" in problems[0]


def test_compare_reports_an_extra_file_on_one_line_naming_it():
    found = records_by_path(record("a", b"a"), record("stowaway.txt", b"s"))
    problems = compare({"a": HASH_A}, found)
    assert len(problems) == 1
    assert problems[0].startswith("stowaway.txt:")
    assert "extra" in problems[0]


def test_compare_reports_a_differing_file_on_one_line_naming_it():
    problems = compare(
        {"a": HASH_A, "b": HASH_B}, records_by_path(record("a", b"a"), record("b", b"B"))
    )
    assert len(problems) == 1
    assert problems[0].startswith("b:")
    assert "differs" in problems[0]


def test_compare_reports_each_problem_once():
    expected = {"differs": HASH_A, "missing": HASH_A}
    found = records_by_path(record("differs", b"z"), record("extra", b"e"))
    problems = compare(expected, found)
    assert sorted(line.split(":", 1)[0] for line in problems) == ["differs", "extra", "missing"]
    assert all("\n" not in line for line in problems)


# --------------------------------------------------------------------------- sha256sum -c


def test_sha256sum_check_passes_in_a_folder_archive(model_dir, tmp_path):
    folder = tmp_path / "demo"
    write(model_dir, "folder", folder)
    result = sha256sum_check(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model/weights.bin: OK" in result.stdout


def test_sha256sum_check_passes_in_an_extracted_zip_archive(model_dir, tmp_path):
    source = tmp_path / "demo.zip"
    write(model_dir, "zip", source)
    out = tmp_path / "out"
    out.mkdir()
    archive.scan_archive(location.resolve(source), extract_to=out, show_progress=False)
    result = sha256sum_check(out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sha256sum_check_fails_after_a_byte_flip(model_dir, tmp_path):
    folder = tmp_path / "demo"
    write(model_dir, "folder", folder)
    target = folder / "model" / "weights.bin"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    result = sha256sum_check(folder)
    assert result.returncode != 0
    assert "model/weights.bin: FAILED" in result.stdout
    assert "model/MLmodel: OK" in result.stdout
