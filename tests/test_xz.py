"""XzWriter: a standard .xz stream that stores incompressible blocks and compresses the rest.

Every stream is checked by an independent reader: Python's ``lzma`` (liblzma), the ``xz`` tool
(which must be installed: these tests fail rather than skip without it) or GNU tar.
"""

from __future__ import annotations

import io
import lzma
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_archive_plugin.storage.containers.tar import TarReader, TarWriter
from mlflow_archive_plugin.storage.containers.xz import BLOCK_SIZE, XzWriter

KIB = 1024
CHUNK = 64 * KIB  # the most one LZMA2 uncompressed chunk holds
SMALL_BLOCK = 256 * KIB
WORDS = [
    "weights", "layer", "model", "tensor", "bias", "flavor", "artifact", "python_function",
    "signature", "input", "output", "float32", "shape", "batch", "loader", "module", "run",
]


def noise(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def text(size: int, seed: int = 0) -> bytes:
    """Compressible but not trivially repetitive: random words from a small vocabulary."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += " ".join(rng.choices(WORDS, k=64)).encode() + b"\n"
    return bytes(out[:size])


def xz_bytes(*pieces: bytes, block_size: int = BLOCK_SIZE) -> bytes:
    target = io.BytesIO()
    with XzWriter(target, block_size=block_size) as writer:
        for piece in pieces:
            assert writer.write(piece) == len(piece)
    return target.getvalue()


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found is not None, f"the {name!r} command is needed by these tests; install it"
    return found


def xz_blocks(path: Path) -> list[dict[str, object]]:
    """Each block as ``xz --robot --list -vv`` describes it."""
    listing = subprocess.run(
        [tool("xz"), "--robot", "--list", "-vv", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    blocks = []
    for line in listing.splitlines():
        fields = line.split("\t")
        if fields[0] == "block":
            blocks.append({
                "uncompressed": int(fields[7]), "check": fields[9], "flags": fields[12],
                "compressed": int(fields[13]), "filters": fields[15],
            })
    return blocks


# --------------------------------------------------------------------------- round trips


def test_empty_input_is_the_stream_liblzma_writes_for_nothing():
    assert xz_bytes() == lzma.compress(b"", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)


@pytest.mark.parametrize("size", [1, 511, 512, 513, 4095, 4097])
@pytest.mark.parametrize("make", [noise, text])
def test_tiny_input_round_trips(make, size):
    data = make(size)
    assert lzma.decompress(xz_bytes(data)) == data


@pytest.mark.parametrize("size", [SMALL_BLOCK - 1, SMALL_BLOCK, SMALL_BLOCK + 1, 3 * SMALL_BLOCK])
@pytest.mark.parametrize("make", [noise, text])
def test_input_around_a_block_boundary_round_trips(make, size):
    data = make(size)
    assert lzma.decompress(xz_bytes(data, block_size=SMALL_BLOCK)) == data


@pytest.mark.parametrize("size", [BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1])
def test_input_around_the_default_block_size_round_trips(size):
    data = noise(size)
    assert lzma.decompress(xz_bytes(data)) == data


@pytest.mark.parametrize("size", [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1])
def test_stored_data_around_uncompressed_chunk_boundaries_round_trips(size):
    data = noise(size)
    assert lzma.decompress(xz_bytes(data)) == data


def test_mixed_compressible_and_incompressible_blocks_round_trip():
    data = noise(300 * KIB, 1) + text(700 * KIB) + noise(200 * KIB, 2) + text(5 * KIB, 3)
    assert lzma.decompress(xz_bytes(data, block_size=SMALL_BLOCK)) == data


def test_input_written_a_byte_at_a_time_round_trips():
    data = text(3000) + noise(3000)
    target = io.BytesIO()
    with XzWriter(target, block_size=1000) as writer:
        for index in range(len(data)):
            writer.write(data[index:index + 1])
    assert lzma.decompress(target.getvalue()) == data


def test_one_write_of_many_blocks_round_trips():
    data = noise(5 * SMALL_BLOCK + 7)
    assert lzma.decompress(xz_bytes(data, block_size=SMALL_BLOCK)) == data


def test_any_bytes_like_object_is_written_and_its_length_returned():
    data = noise(100_000)
    target = io.BytesIO()
    with XzWriter(target, block_size=SMALL_BLOCK) as writer:
        written = [writer.write(bytearray(data[:10])), writer.write(memoryview(data)[10:])]
    assert written == [10, len(data) - 10]
    assert lzma.decompress(target.getvalue()) == data


def test_the_callers_buffer_may_be_reused_after_write_returns():
    first, second = noise(2 * SMALL_BLOCK, 1), noise(SMALL_BLOCK // 2, 2)
    buffer = bytearray(first)
    target = io.BytesIO()
    with XzWriter(target, block_size=SMALL_BLOCK) as writer:
        writer.write(buffer)
        buffer[:] = second
        writer.write(buffer)
    assert lzma.decompress(target.getvalue()) == first + second


@settings(derandomize=True, max_examples=25, deadline=None)
@given(
    pieces=st.lists(
        st.tuples(st.sampled_from(["noise", "text", "zeros"]), st.integers(0, 150_000)),
        max_size=5,
    ),
    write_sizes=st.lists(st.integers(1, 90_000), min_size=1, max_size=8),
    block_size=st.sampled_from([4 * KIB, CHUNK + 1, SMALL_BLOCK]),
)
def test_any_sequence_of_writes_round_trips(pieces, write_sizes, block_size):
    makers = {"noise": noise, "text": text, "zeros": bytes}
    data = b"".join(makers[kind](size) for kind, size in pieces)
    target = io.BytesIO()
    with XzWriter(target, block_size=block_size) as writer:
        position, turn = 0, 0
        while position < len(data):
            step = write_sizes[turn % len(write_sizes)]
            writer.write(data[position:position + step])
            position, turn = position + step, turn + 1
    assert lzma.decompress(target.getvalue()) == data


# --------------------------------------------------------------------------- the xz tool


@pytest.fixture()
def mixed_stream(tmp_path) -> tuple[Path, bytes]:
    data = noise(1000 * KIB, 1) + text(900 * KIB) + noise(3 * BLOCK_SIZE // 2, 2) + text(9)
    path = tmp_path / "mixed.xz"
    path.write_bytes(xz_bytes(data))
    return path, data


def test_xz_tests_the_stream_as_valid(mixed_stream):
    path, _ = mixed_stream
    result = subprocess.run([tool("xz"), "-t", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_xz_decompresses_the_stream_to_the_bytes_written(mixed_stream):
    path, data = mixed_stream
    result = subprocess.run([tool("xz"), "-dc", str(path)], capture_output=True, check=True)
    assert result.stdout == data


def test_xz_decompresses_the_stream_in_parallel_to_the_bytes_written(mixed_stream):
    # Multithreaded decoding needs both sizes in every block header, which the writer puts.
    path, data = mixed_stream
    result = subprocess.run([tool("xz"), "-T4", "-dc", str(path)], capture_output=True,
                            check=True)
    assert result.stdout == data


def test_every_block_has_its_sizes_in_its_header_and_a_crc32_check(mixed_stream):
    path, _ = mixed_stream
    blocks = xz_blocks(path)
    assert len(blocks) >= 3
    assert {(block["flags"], block["check"]) for block in blocks} == {("cu", "CRC32")}


def test_text_inside_a_block_of_noise_gets_a_compressed_block_of_its_own(tmp_path):
    path = tmp_path / "mixed.xz"
    path.write_bytes(xz_bytes(noise(1024 * KIB, 1) + text(1024 * KIB) + noise(1024 * KIB, 2)))
    blocks = xz_blocks(path)
    ratios = [block["compressed"] / block["uncompressed"] for block in blocks]
    assert len(blocks) == 3
    assert ratios[0] > 1 and ratios[2] > 1  # stored: chunk headers make them a little larger
    assert ratios[1] < 0.5


def test_dictionary_is_no_larger_than_the_block_needs(tmp_path):
    path = tmp_path / "small.xz"
    path.write_bytes(xz_bytes(text(100 * KIB)))
    (block,) = xz_blocks(path)
    assert block["filters"] == "--lzma2=dict=128KiB"


# --------------------------------------------------------------------------- sizes


def test_compressible_text_shrinks_to_what_lzma_makes_of_it():
    data = text(1024 * KIB)
    ours = len(xz_bytes(data))
    assert ours < 0.2 * len(data)
    assert ours < 1.01 * len(lzma.compress(data, preset=6))


def test_noise_is_written_in_full_uncompressed_chunks(tmp_path):
    size = 5 * CHUNK + 100
    path = tmp_path / "noise.xz"
    path.write_bytes(xz_bytes(noise(size)))
    (block,) = xz_blocks(path)
    assert block["compressed"] == size + 3 * 6 + 1  # a 3-byte header a chunk, an end marker


def test_random_data_grows_by_less_than_a_thousandth():
    data = noise(3 * BLOCK_SIZE + 12345)
    assert len(data) < len(xz_bytes(data)) < 1.001 * len(data)


# --------------------------------------------------------------------------- file behaviour


def test_write_after_close_is_refused():
    writer = XzWriter(io.BytesIO())
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x")


def test_closing_twice_writes_the_stream_once():
    target = io.BytesIO()
    writer = XzWriter(target)
    writer.write(b"data")
    writer.close()
    size = len(target.getvalue())
    writer.close()
    assert len(target.getvalue()) == size
    assert lzma.decompress(target.getvalue()) == b"data"


def test_close_leaves_the_target_open():
    target = io.BytesIO()
    XzWriter(target).close()
    assert not target.closed


class _FailingTarget(io.BytesIO):
    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.fail_after = fail_after

    def write(self, data) -> int:
        if self.tell() + len(data) > self.fail_after:
            raise OSError("disk full")
        return super().write(data)


def test_after_a_failed_write_close_adds_no_index_to_the_broken_stream():
    target = _FailingTarget(fail_after=100_000)
    writer = XzWriter(target, block_size=SMALL_BLOCK)
    with pytest.raises(OSError, match="disk full"):
        writer.write(noise(SMALL_BLOCK))
    written = target.getvalue()
    writer.close()
    assert target.getvalue() == written


def test_after_a_failed_write_further_writes_are_refused():
    writer = XzWriter(_FailingTarget(fail_after=100_000), block_size=SMALL_BLOCK)
    with pytest.raises(OSError):
        writer.write(noise(SMALL_BLOCK))
    with pytest.raises(ValueError, match="failed"):
        writer.write(b"more")


# --------------------------------------------------------------------------- tar.xz


@pytest.fixture()
def tar_xz(tmp_path) -> tuple[Path, dict[str, bytes]]:
    files = {
        "model/weights.bin": noise(BLOCK_SIZE + 5000),
        "model/notes.txt": text(300 * KIB),
        "model/MLmodel": b"flavors:\n  python_function:\n    loader_module: demo\n",
    }
    source = tmp_path / "source"
    source.mkdir()
    path = tmp_path / "model.tar.xz"
    with path.open("wb") as target, TarWriter(target, "xz") as writer:
        for name, data in files.items():
            local = source / name.replace("/", "_")
            local.write_bytes(data)
            writer.add_file(name, local)
        writer.add_bytes("checksum.txt", b"abc  model/MLmodel\n")
    files["checksum.txt"] = b"abc  model/MLmodel\n"
    return path, files


def test_gnu_tar_lists_a_tar_xz_written_by_tar_writer(tar_xz):
    path, files = tar_xz
    listing = subprocess.run([tool("tar"), "-tJf", str(path)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert sorted(listing) == sorted(files)


def test_tarfile_reads_back_what_tar_writer_wrote_as_tar_xz(tar_xz):
    path, files = tar_xz
    with tarfile.open(path, "r:xz") as archive:
        read = {member.name: archive.extractfile(member).read() for member in archive}
    assert read == files


def test_tar_reader_reads_back_what_tar_writer_wrote_as_tar_xz(tar_xz):
    path, files = tar_xz
    with path.open("rb") as source, TarReader(source, "tar.xz") as reader:
        read = {name: stream.read() for name, stream in reader.entries()}
    assert read == files


def test_tar_xz_is_the_weights_stored_and_the_text_compressed(tar_xz):
    path, files = tar_xz
    weights, notes = len(files["model/weights.bin"]), len(files["model/notes.txt"])
    assert weights < path.stat().st_size < 1.001 * weights + 0.2 * notes
