"""A streaming .xz writer that stores what does not compress instead of running LZMA on it.

Model weights are close to random bytes: LZMA2 at any preset shrinks them by a few percent at
a few MB/s. But LZMA2 also has *uncompressed chunks* (control byte 0x01 or 0x02, a 16-bit
size, up to 64 KiB of literal bytes), so a block of an .xz stream may carry data as is. This
writer buffers the input into blocks (4 MiB by default), looks at a few small samples of each
with zlib level 1, and writes the block's bytes in uncompressed chunks when none of them
shrinks; otherwise it classifies the block's 64 KiB segments the same way and LZMA2-compresses
(preset 6) each run of compressible segments, storing the rest. The result is a standard .xz
stream (format spec 1.2: CRC32 checks, sizes in every block header, an index) that liblzma,
Python's ``lzma``/``tarfile``, ``xz`` and ``tar -J`` read like any other.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from typing import BinaryIO

# One block buffer of this much input is the writer's memory, plus at most about as much
# compressed output while a compressible block is written (and liblzma's encoder, tens of MiB at a
# 4 MiB dictionary). 4 MiB keeps that small, bounds what a misjudged buffer costs (LZMA2 runs
# at a few MB/s on weights), still gives LZMA2 a 4 MiB dictionary for text, lets `xz -T`
# decode blocks in parallel, and its fixed cost (header, padding, check, index record: about
# 30 bytes a block) is nothing next to the 3 bytes every 64 KiB chunk costs anyway.
BLOCK_SIZE = 4 * 1024 * 1024
_CHUNK = 64 * 1024  # the most an LZMA2 uncompressed chunk holds; also the segment size
# Compress only what a sample shows shrinking to at most this fraction. Stricter than zip's 0.9
# (deflate runs at tens of MB/s): LZMA2 runs at 1-2 MB/s, and half-precision weights, whose
# exponent bytes make zlib save 10-25%, would cost minutes per GiB for a saving of that order.
_WORTH_COMPRESSING = 0.7
_BLOCK_SAMPLES = 8  # spread over the block: a part of a block (a text file) is seen too
_BLOCK_SAMPLE = 4 * 1024
_SEGMENT_SAMPLE = 8 * 1024
_ALWAYS_COMPRESS = 512  # too little to judge from a sample, and cheap to compress anyway
_MAX_DICT = 8 * 1024 * 1024  # what xz -6 uses; a block never refers further back than itself
_PRESET = 6

_MAGIC = b"\xfd7zXZ\x00"
_FOOTER_MAGIC = b"YZ"
_STREAM_FLAGS = b"\x00\x01"  # check type 0x01: CRC32 of each block's uncompressed data
_LZMA2_ID = 0x21
_END_OF_CHUNKS = b"\x00"
_UNCOMPRESSED_RESET = 0x01  # uncompressed chunk, dictionary reset: the first of a block
_UNCOMPRESSED = 0x02
_CRC32 = struct.Struct("<I")


def _vli(value: int) -> bytes:
    """The .xz variable-length integer: 7 bits a byte, least significant first."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _dictionary(size: int) -> tuple[int, int]:
    """LZMA2's one-byte dictionary-size property for ``size`` bytes of input (at least 4 KiB,
    at most xz -6's 8 MiB) and the dictionary size it stands for, ``2 or 3 << (n // 2 + 11)``."""
    wanted = min(max(size, 4096), _MAX_DICT)
    prop = 0
    while (2 | (prop & 1)) << (prop // 2 + 11) < wanted:
        prop += 1
    return prop, (2 | (prop & 1)) << (prop // 2 + 11)


def _block_header(compressed: int, uncompressed: int, dict_prop: int) -> bytes:
    """Header size, flags (one filter, both sizes present), sizes, LZMA2 filter flags,
    padding to a multiple of four, CRC32."""
    header = bytearray(b"\x00\xc0")
    header += _vli(compressed) + _vli(uncompressed)
    header += _vli(_LZMA2_ID) + _vli(1) + bytes([dict_prop])
    header += bytes(-(len(header) + 4) % 4)
    header[0] = (len(header) + 4) // 4 - 1
    return bytes(header) + _CRC32.pack(zlib.crc32(header))


def _compresses(sample: memoryview | bytes) -> bool:
    return len(zlib.compress(sample, 1)) < _WORTH_COMPRESSING * len(sample)


def _block_has_compressible_parts(data: memoryview) -> bool:
    """Whether any of a few samples spread evenly over ``data`` shrinks."""
    size = len(data)
    if size <= _BLOCK_SAMPLES * _BLOCK_SAMPLE:
        starts = range(0, size, _BLOCK_SAMPLE)
    else:
        step = (size - _BLOCK_SAMPLE) // (_BLOCK_SAMPLES - 1)
        starts = range(0, size - _BLOCK_SAMPLE + 1, step)
    return any(_compresses(data[start:start + _BLOCK_SAMPLE]) for start in starts)


def _runs(data: memoryview) -> list[tuple[int, int, bool]]:
    """``data`` cut into runs of 64 KiB segments judged alike: (start, end, compressible)."""
    runs: list[tuple[int, int, bool]] = []
    for start in range(0, len(data), _CHUNK):
        segment = data[start:start + _CHUNK]
        middle = max(0, (len(segment) - _SEGMENT_SAMPLE) // 2)
        compressible = _compresses(segment[middle:middle + _SEGMENT_SAMPLE])
        if runs and runs[-1][2] == compressible:
            runs[-1] = (runs[-1][0], start + len(segment), compressible)
        else:
            runs.append((start, start + len(segment), compressible))
    return runs


def _stored_size(size: int) -> int:
    """LZMA2 bytes for ``size`` bytes in uncompressed chunks: 3 bytes a chunk, end marker."""
    return size + 3 * -(-size // _CHUNK) + 1


def _chunk_header(first: bool, size: int) -> bytes:
    control = _UNCOMPRESSED_RESET if first else _UNCOMPRESSED
    return bytes((control, (size - 1) >> 8, (size - 1) & 0xFF))


class XzWriter:
    """A write-only binary file writing one .xz stream to ``target``.

    ``close()`` writes the last block, the index and the stream footer; it does not close
    ``target``. Input is kept until a whole block has arrived, so ``flush()`` only flushes
    ``target``.
    """

    def __init__(self, target: BinaryIO, *, block_size: int = BLOCK_SIZE) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be positive, not {block_size}")
        self._target = target
        self._block_size = block_size
        self._buffer = bytearray(block_size)
        self._filled = 0
        self._records = bytearray()  # the index records: unpadded size, uncompressed size
        self._blocks = 0
        self._closed = False
        self._broken = False
        self._target.write(_MAGIC + _STREAM_FLAGS + _CRC32.pack(zlib.crc32(_STREAM_FLAGS)))

    @property
    def closed(self) -> bool:
        return self._closed

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self._closed:
            raise ValueError("write to a closed XzWriter")
        if self._broken:
            raise ValueError("an earlier write to this XzWriter failed; its stream is incomplete")
        view = memoryview(data).cast("B")
        size = len(view)
        position = 0
        while position < size:
            if self._filled == 0 and size - position >= self._block_size:
                # A whole block in the caller's buffer: written from there, not copied.
                self._emit(view[position:position + self._block_size])
                position += self._block_size
                continue
            taken = min(self._block_size - self._filled, size - position)
            self._buffer[self._filled:self._filled + taken] = view[position:position + taken]
            self._filled += taken
            position += taken
            if self._filled == self._block_size:
                self._filled = 0
                self._emit(memoryview(self._buffer))
        return size

    def flush(self) -> None:
        if hasattr(self._target, "flush"):
            self._target.flush()

    def close(self) -> None:
        """Write the buffered input, the index and the footer; nothing after a failed write.
        ``target`` is flushed, not closed."""
        if self._closed:
            return
        self._closed = True
        if self._broken:
            return
        filled, self._filled = self._filled, 0
        if filled:
            self._emit(memoryview(self._buffer)[:filled])
        self._buffer = bytearray()
        index = bytearray(b"\x00") + _vli(self._blocks) + self._records
        index += bytes(-len(index) % 4)
        index += _CRC32.pack(zlib.crc32(index))
        footer = _CRC32.pack(len(index) // 4 - 1) + _STREAM_FLAGS
        self._target.write(bytes(index) + _CRC32.pack(zlib.crc32(footer)) + footer + _FOOTER_MAGIC)
        self.flush()

    def __enter__(self) -> XzWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # ------------------------------------------------------------------ blocks

    def _emit(self, data: memoryview) -> None:
        try:
            self._write_block(data)
        except BaseException:
            self._broken = True  # a block may be half written: an index now would lie
            raise

    def _write_block(self, data: memoryview) -> None:
        """``data`` as one stored block, or as several blocks split where compressibility
        changes; each compressible run is LZMA2-compressed unless that does not shrink it."""
        if len(data) > _ALWAYS_COMPRESS and not _block_has_compressible_parts(data):
            self._stored_block(data)
            return
        runs = [(0, len(data), True)] if len(data) <= _ALWAYS_COMPRESS else _runs(data)
        for start, end, compressible in runs:
            run = data[start:end]
            if not compressible:
                self._stored_block(run)
                continue
            prop, dict_size = _dictionary(len(run))
            encoder = lzma.LZMACompressor(
                format=lzma.FORMAT_RAW,
                filters=[{"id": lzma.FILTER_LZMA2, "preset": _PRESET, "dict_size": dict_size}],
            )
            packed = encoder.compress(run) + encoder.flush()  # flush ends with the 0x00 marker
            if len(packed) >= _stored_size(len(run)):
                self._stored_block(run)
            else:
                self._finish_block(run, prop, [packed], len(packed))

    def _stored_block(self, data: memoryview) -> None:
        prop, _ = _dictionary(len(data))
        pieces = []
        for start in range(0, len(data), _CHUNK):
            chunk = data[start:start + _CHUNK]
            pieces.append(_chunk_header(start == 0, len(chunk)))
            pieces.append(chunk)
        pieces.append(_END_OF_CHUNKS)
        self._finish_block(data, prop, pieces, _stored_size(len(data)))

    def _finish_block(self, data: memoryview, prop: int, payload: list, size: int) -> None:
        header = _block_header(size, len(data), prop)
        check = zlib.crc32(data)
        self._target.write(header)
        for piece in payload:
            self._target.write(piece)
        self._target.write(bytes(-size % 4) + _CRC32.pack(check))
        self._records += _vli(len(header) + size + 4) + _vli(len(data))
        self._blocks += 1
