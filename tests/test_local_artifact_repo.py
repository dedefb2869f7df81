"""An ``archive+file`` store behaves as MLflow's own local artifact repository.

Each test is named after the test of MLflow's ``tests/store/artifact/test_local_artifact_repo.py``
that checks the same behaviour, and checks it here in its own way against the plugin's
repository, reached through MLflow's registry of artifact repositories (the ``archive+file``
entry point). The folder is a real one; nothing is mocked. Beyond MLflow's local repository,
a store also keeps models as archives (``tests/test_artifact_repo.py``); what is plain here
must stay exactly as MLflow would keep it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
from pathlib import Path

import pytest
from mlflow.entities.span import Span, SpanAttributeKey
from mlflow.entities.trace_data import TraceData
from mlflow.exceptions import MlflowException, MlflowTraceDataCorrupted, MlflowTraceDataNotFound
from mlflow.store.artifact.artifact_repo import StreamUploadMixin
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracing.otel.otel_archival import TRACE_ARCHIVAL_FILENAME, spans_to_traces_data_pb
from mlflow.tracing.utils import build_otel_context
from opentelemetry.sdk.trace import ReadableSpan

from mlflow_archive_plugin.plugins.artifact_repo import (
    UPLOADING_PREFIX,
    ArchiveArtifactRepository,
)

OUTSIDE = "outside-the-store"


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "store"
    folder.mkdir()
    return folder


@pytest.fixture
def repo(root) -> ArchiveArtifactRepository:
    found = get_artifact_repository(f"archive+file://{root}")
    assert isinstance(found, ArchiveArtifactRepository)
    return found


@pytest.fixture
def source(tmp_path) -> Path:
    """A folder of files to log, away from the store."""
    folder = tmp_path / "source"
    folder.mkdir()
    return folder


@pytest.fixture
def secret(tmp_path) -> Path:
    """A folder beside the store (never inside it) holding one secret file."""
    folder = tmp_path / OUTSIDE
    folder.mkdir()
    (folder / "secret.txt").write_text("the secret")
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def staged_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"{UPLOADING_PREFIX}*"))


def a_span() -> Span:
    return Span(ReadableSpan(
        name="step",
        context=build_otel_context(7, 3),
        start_time=10,
        end_time=20,
        attributes={
            SpanAttributeKey.REQUEST_ID: json.dumps("tr-store"),
            SpanAttributeKey.INPUTS: json.dumps({"x": 1}),
            SpanAttributeKey.OUTPUTS: json.dumps({"y": 2}),
            SpanAttributeKey.SPAN_TYPE: json.dumps("CHAIN"),
        },
    ))


# --------------------------------------------------------------------------- listing and logging


def test_list_artifacts(repo, root):
    assert repo.list_artifacts() == []
    write(root / "placed-by-hand.csv", "a,b\n")

    listed = repo.list_artifacts()

    assert [(info.path, info.is_dir, info.file_size) for info in listed] == [
        ("placed-by-hand.csv", False, 4)]


def test_log_artifacts(repo, root, source):
    logged = write(source / "notes.md", "# notes")

    repo.log_artifact(str(logged))

    assert [info.path for info in repo.list_artifacts()] == ["notes.md"]
    stored = root / "notes.md"
    assert stored.read_text() == "# notes"
    assert not stored.samefile(logged)


def test_log_artifact_preserves_source_file_mtime(repo, root, source):
    logged = write(source / "dated.txt", "old news")
    when = 1_500_000_000_987_654_321
    os.utime(logged, ns=(when, when))

    repo.log_artifact(str(logged))

    assert (root / "dated.txt").stat().st_mtime_ns == logged.stat().st_mtime_ns


@pytest.mark.parametrize("into", [None, "given"])
def test_download_artifacts(repo, source, tmp_path, into):
    write(source / "data.txt", "payload")
    (source / "hollow").mkdir()
    repo.log_artifacts(str(source))
    destination = None
    if into:
        destination = tmp_path / into
        destination.mkdir()

    one = Path(repo.download_artifacts("data.txt", dst_path=destination and str(destination)))
    everything = Path(repo.download_artifacts("", dst_path=destination and str(destination)))

    assert one.read_text() == "payload"
    assert (everything / "hollow").is_dir()
    assert list((everything / "hollow").iterdir()) == []


def test_download_artifacts_does_not_copy(repo, root, source):
    repo.log_artifact(str(write(source / "big.bin", "not copied")))

    found = repo.download_artifacts("big.bin")

    assert Path(found).samefile(root / "big.bin")
    assert found.startswith(repo.artifact_dir)


def test_get_local_path_returns_absolute_path(repo, root, source):
    repo.log_artifact(str(write(source / "served.txt", "sent as is")), "deep/er")

    local = repo.get_local_path("deep/er/served.txt")

    assert os.path.isabs(local)
    assert Path(local).samefile(root / "deep" / "er" / "served.txt")
    assert Path(local).read_text() == "sent as is"


def test_download_artifacts_returns_absolute_paths(repo, source, tmp_path, monkeypatch):
    repo.log_artifact(str(write(source / "x.txt", "x")))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "relative-dst").mkdir()
    (tmp_path / "absolute-dst").mkdir()

    results = [repo.download_artifacts("x.txt", dst_path=dst)
               for dst in ("relative-dst", str(tmp_path / "absolute-dst"), None)]

    assert all(os.path.isabs(result) for result in results)
    assert results[0].startswith(str(tmp_path / "relative-dst"))
    assert results[1].startswith(str(tmp_path / "absolute-dst"))


@pytest.mark.parametrize("folder", ["one", "one/two", "one/two/three/four"])
def test_artifacts_are_logged_to_and_downloaded_from_repo_subdirectory_successfully(
        repo, source, folder):
    repo.log_artifact(str(write(source / "leaf.txt", f"in {folder}")), artifact_path=folder)

    downloaded_folder = Path(repo.download_artifacts(folder))
    downloaded_file = Path(repo.download_artifacts(f"{folder}/leaf.txt"))

    assert [p.name for p in downloaded_folder.iterdir()] == ["leaf.txt"]
    assert (downloaded_folder / "leaf.txt").read_text() == f"in {folder}"
    assert downloaded_file.read_text() == f"in {folder}"


@pytest.mark.parametrize("bad", ["/", "//", "/etc", "/abs/dir", ".", "..", "../up",
                                 "a/../../up", "a/./b", "a/b/"])
def test_log_artifact_throws_exception_for_invalid_artifact_paths(repo, root, source, bad):
    logged = write(source / "f.txt", "f")

    for call in (lambda: repo.log_artifact(str(logged), bad),
                 lambda: repo.log_artifacts(str(source), bad),
                 lambda: repo.log_artifact_from_stream(io.BytesIO(b"f"), "f.txt", bad)):
        with pytest.raises(MlflowException, match="Invalid artifact path") as caught:
            call()
        assert "\n" not in caught.value.message
    assert list(root.iterdir()) == []


def test_logging_directory_of_artifacts_produces_expected_repo_contents(repo, root, source):
    write(source / "top.txt", "T")
    write(source / "inner" / "deeper" / "low.txt", "L")
    write(source / "inner" / "mid.txt", "M")

    repo.log_artifacts(str(source))

    stored = {p.relative_to(root).as_posix(): p.read_text()
              for p in root.rglob("*") if p.is_file()}
    assert stored == {"top.txt": "T", "inner/mid.txt": "M", "inner/deeper/low.txt": "L"}
    assert Path(repo.download_artifacts("inner/deeper/low.txt")).read_text() == "L"


def test_hidden_files_are_logged_correctly(repo, source):
    repo.log_artifact(str(write(source / ".hidden", "dot file")))

    assert [info.path for info in repo.list_artifacts()] == [".hidden"]
    assert Path(repo.download_artifacts(".hidden")).read_text() == "dot file"


def test_log_artifact_is_noop_when_source_matches_destination(repo, root):
    in_place = write(root / "already.txt", "here")
    before = in_place.stat()

    repo.log_artifact(str(in_place))

    after = in_place.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert in_place.read_text() == "here"
    assert staged_leftovers(root) == []


def test_log_artifact_rejects_internal_temp_file_prefix(repo, root, source):
    reserved = write(source / f"{UPLOADING_PREFIX}abc", "looks like an upload")

    for call in (lambda: repo.log_artifact(str(reserved)),
                 lambda: repo.log_artifact_from_stream(io.BytesIO(b"x"), reserved.name)):
        with pytest.raises(MlflowException, match="Artifact names starting with"):
            call()
    assert list(root.iterdir()) == []


def test_log_artifact_from_stream_writes_file_atomically(repo, root):
    assert isinstance(repo, StreamUploadMixin)

    repo.log_artifact_from_stream(io.BytesIO(b"streamed bytes"), "ignored/dirs/up.bin",
                                  artifact_path="uploads")

    assert (root / "uploads" / "up.bin").read_bytes() == b"streamed bytes"
    assert staged_leftovers(root) == []
    assert [info.path for info in repo.list_artifacts("uploads")] == ["uploads/up.bin"]


def test_log_artifact_from_async_stream_writes_file_atomically(repo, root):
    async def chunks():
        for piece in (b"part one, ", b"part two"):
            yield piece

    asyncio.run(repo.log_artifact_from_async_stream(chunks(), "joined.txt", "async"))

    assert (root / "async" / "joined.txt").read_bytes() == b"part one, part two"
    assert staged_leftovers(root) == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_log_artifact_from_stream_preserves_default_file_mode(repo, root, tmp_path):
    probe = tmp_path / "probe"
    probe.touch()
    expected = stat.S_IMODE(probe.stat().st_mode)

    repo.log_artifact_from_stream(io.BytesIO(b"mode"), "moded.txt")

    assert stat.S_IMODE((root / "moded.txt").stat().st_mode) == expected


def test_log_artifact_from_stream_cleans_up_temp_file_on_failure(repo, root):
    kept = write(root / "uploads" / "same.txt", "the earlier upload")

    class BreaksHalfway(io.RawIOBase):
        def __init__(self):
            self.calls = 0

        def readable(self):
            return True

        def read(self, size=-1):
            self.calls += 1
            if self.calls > 1:
                raise ConnectionResetError("client went away")
            return b"half of the new upload"

    with pytest.raises(ConnectionResetError, match="client went away"):
        repo.log_artifact_from_stream(BreaksHalfway(), "same.txt", artifact_path="uploads")

    assert kept.read_text() == "the earlier upload"
    assert staged_leftovers(root) == []


def test_log_artifact_from_stream_closes_fd_when_fdopen_fails(repo, root):
    """MLflow's test forces ``os.fdopen`` to fail with mocks; here, without mocks, the step
    after the staging file was opened fails for real (the destination is a folder), and no
    descriptor nor staging file may be left behind."""
    (root / "taken").mkdir(parents=True)
    (root / "taken" / "keep.txt").write_text("inside the folder")
    descriptors = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None

    with pytest.raises(OSError):
        repo.log_artifact_from_stream(io.BytesIO(b"x"), "taken")

    if descriptors is not None:
        assert len(os.listdir("/proc/self/fd")) == descriptors
    assert staged_leftovers(root) == []
    assert (root / "taken" / "keep.txt").read_text() == "inside the folder"


# --------------------------------------------------------------------------- deleting


def test_delete_artifacts_folder(repo, root, source):
    write(source / "a.txt", "A")
    write(source / "sub" / "b.txt", "B")
    repo.log_artifacts(str(source))
    assert (root / "sub" / "b.txt").is_file()

    repo.delete_artifacts()

    assert not root.exists()


def test_delete_artifacts_files(repo, root, source):
    write(source / "stay.txt", "S")
    write(source / "go.txt", "G")
    write(source / "sub" / "go-too.txt", "G2")
    repo.log_artifacts(str(source))

    repo.delete_artifacts("go.txt")
    repo.delete_artifacts("sub/go-too.txt")

    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["stay.txt", "sub"]


def test_delete_artifacts_with_nonexistent_path_succeeds(repo, root):
    write(root / "other.txt", "untouched")

    repo.delete_artifacts("never/logged")

    assert (root / "other.txt").read_text() == "untouched"


# --------------------------------------------------------------------------- bad paths on reads


@pytest.mark.parametrize("bad", ["/absolute/path/to/file", "../x", "a/../../x", "..", "x#y"])
def test_download_artifacts_invalid_remote_file_path(repo, root, tmp_path, bad):
    write(root / "x", "x")
    for call in (lambda: repo.download_artifacts(bad),
                 lambda: repo.download_artifacts(bad, dst_path=str(tmp_path)),
                 lambda: repo.get_local_path(bad),
                 lambda: repo.list_artifacts(bad),
                 lambda: repo.delete_artifacts(bad)):
        with pytest.raises(MlflowException, match="Invalid path"):
            call()
    assert (root / "x").read_text() == "x"


# --------------------------------------------------------------------------- traces


def test_trace_data(repo):
    with pytest.raises(MlflowTraceDataNotFound, match="Trace data not found for path="):
        repo.download_trace_data()
    repo.upload_trace_data("{not json")
    with pytest.raises(MlflowTraceDataCorrupted, match="Trace data is corrupted for path="):
        repo.download_trace_data()

    document = {"spans": [], "request": {"q": "?"}, "response": {"a": "!"}}
    repo.upload_trace_data(json.dumps(document))

    assert repo.download_trace_data() == document


def test_archived_trace_data_errors(repo, root):
    assert repo.download_archived_trace_data().to_dict() == TraceData(spans=[]).to_dict()

    (root / TRACE_ARCHIVAL_FILENAME).write_bytes(b"\xff\x00 not a protobuf message")

    with pytest.raises(MlflowTraceDataCorrupted, match="Trace data is corrupted for path="):
        repo.download_archived_trace_data()


def test_upload_archived_trace_data_rejects_empty_spans(repo, root):
    with pytest.raises(MlflowException, match="at least one span"):
        repo.upload_archived_trace_data(TraceData(spans=[]))
    assert not (root / TRACE_ARCHIVAL_FILENAME).exists()


def test_trace_data_artifact_repo(repo):
    document = TraceData(spans=[a_span()]).to_dict()

    repo.upload_trace_data(json.dumps(document))

    assert repo.download_trace_data() == document


def test_upload_archived_trace_data_rejects_non_trace_data(repo):
    with pytest.raises(MlflowException, match="must be a TraceData object"):
        repo.upload_archived_trace_data({"spans": []})


def test_archived_trace_data_with_trace_data_object(repo):
    data = TraceData(spans=[a_span()])

    repo.upload_archived_trace_data(data)

    assert repo.download_archived_trace_data().to_dict() == data.to_dict()


def test_upload_archived_trace_data_bytes(repo, root):
    data = TraceData(spans=[a_span()])

    repo.upload_archived_trace_data_bytes(spans_to_traces_data_pb(data.spans))

    assert (root / TRACE_ARCHIVAL_FILENAME).is_file()
    assert repo.download_archived_trace_data().to_dict() == data.to_dict()


# --------------------------------------------------------------------------- symbolic links


OUT_OF_ROOT = "resolved path is outside the artifact directory"


@pytest.mark.parametrize(("link", "path", "operation"), [
    ("leak", "leak/secret.txt", "download_artifacts"),
    ("leak", "leak/secret.txt", "download_artifacts_to_dst"),
    ("leak", "leak/secret.txt", "get_local_path"),
    ("leak", "leak", "list_artifacts"),
    ("leak", "leak/secret.txt", "_download_file"),
    ("parent_link", "parent_link/secret.txt", "download_artifacts"),
    ("leak", "leak/secret.txt", "delete_artifacts"),
])
def test_symlink_path_traversal_blocked(repo, root, secret, tmp_path, link, path, operation):
    (root / link).symlink_to(secret, target_is_directory=True)
    received = tmp_path / "received"
    received.mkdir()
    calls = {
        "download_artifacts": lambda: repo.download_artifacts(path),
        "download_artifacts_to_dst": lambda: repo.download_artifacts(path, str(received)),
        "get_local_path": lambda: repo.get_local_path(path),
        "list_artifacts": lambda: repo.list_artifacts(path),
        "_download_file": lambda: repo._download_file(path, str(received / "copy")),
        "delete_artifacts": lambda: repo.delete_artifacts(path),
    }

    with pytest.raises(MlflowException, match=OUT_OF_ROOT):
        calls[operation]()

    assert (secret / "secret.txt").read_text() == "the secret"
    assert not any("the secret" in p.read_text() for p in received.rglob("*") if p.is_file())


def test_nested_symlink_traversal_blocked(repo, root, secret, tmp_path):
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "leak").symlink_to(secret, target_is_directory=True)

    with pytest.raises(MlflowException, match=OUT_OF_ROOT):
        repo.download_artifacts("a/b/leak/secret.txt")
    # the whole store downloads without what the link leads to
    (tmp_path / "whole").mkdir()
    whole = Path(repo.download_artifacts("", dst_path=str(tmp_path / "whole")))
    assert not any(p.name == "secret.txt" for p in whole.rglob("*"))
    assert [info.path for info in repo.list_artifacts("a/b")] == []


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_symlink_within_artifact_dir_allowed(repo, root, kind):
    if kind == "file":
        write(root / "real.txt", "REAL")
        (root / "alias.txt").symlink_to(root / "real.txt")
        path = "alias.txt"
    else:
        write(root / "real" / "inner.txt", "REAL")
        (root / "alias").symlink_to(root / "real", target_is_directory=True)
        path = "alias/inner.txt"
        assert [info.path for info in repo.list_artifacts("alias")] == ["alias/inner.txt"]

    assert Path(repo.download_artifacts(path)).read_text() == "REAL"


def test_list_artifacts_on_file_returns_empty(repo, root):
    write(root / "single.txt", "1")

    assert repo.list_artifacts("single.txt") == []


@pytest.mark.parametrize("with_dst", [True, False])
def test_download_artifacts_nonexistent_raises_resource_does_not_exist(repo, tmp_path,
                                                                      with_dst):
    with pytest.raises(MlflowException, match="No such artifact") as caught:
        repo.download_artifacts("absent.txt", dst_path=str(tmp_path) if with_dst else None)

    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_get_local_path_nonexistent_raises_resource_does_not_exist(repo):
    with pytest.raises(MlflowException, match="No such artifact") as caught:
        repo.get_local_path("absent.txt")

    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
