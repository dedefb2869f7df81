"""XzWriter on incompressible bytes against plain copying and liblzma, in one run.

Each measurement runs in a fresh subprocess (so peak RSS is its own; every child imports the
same modules) and is repeated; the table shows medians. liblzma runs at a few MB/s on random
bytes at any preset, so it is timed on the first ``--lzma-mib`` MiB only (its rate does not
depend on the length). Every .xz written is checked with ``xz -t`` (or Python's lzma).

    python benchmarks/bench_xz.py --size-mib 256 --repeat 3 --lzma-mib 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import lzma
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 1024 * 1024
MODES = {  # mode: what it writes
    "copy": "plain file copy, 1 MiB reads (the floor)",
    "xzwriter": "XzWriter, 1 MiB writes",
    "tar": "TarWriter(target, '') - tar with SHA-256 of each file",
    "tar.xz": "TarWriter(target, 'xz') - the same through XzWriter",
    "lzma-6": "lzma.open(preset=6)",
    "lzma-0": "lzma.open(preset=0)",
}


def sink_for(mode: str, target):
    from mlflow_archive_plugin.storage.containers.xz import XzWriter

    if mode == "copy":
        return contextlib.nullcontext(target)
    if mode == "xzwriter":
        return XzWriter(target)
    return lzma.open(target, "wb", preset=int(mode[-1]))


def child(mode: str, source: Path, dest: Path, limit: int) -> None:
    from mlflow_archive_plugin.storage.containers.tar import TarWriter

    start = time.perf_counter()
    if mode in ("tar", "tar.xz"):
        with dest.open("wb") as target, TarWriter(target, mode[4:]) as writer:
            writer.add_file("model/weights.bin", source)
    else:
        with source.open("rb") as src, dest.open("wb") as target, sink_for(mode, target) as sink:
            left = limit
            while left and (chunk := src.read(min(CHUNK, left))):
                sink.write(chunk)
                left -= len(chunk)
    seconds = time.perf_counter() - start
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "rss_kib": rss_kib}))


def check_xz(path: Path) -> None:
    xz = shutil.which("xz")
    if xz is not None:
        subprocess.run([xz, "-t", str(path)], check=True)
        return
    with lzma.open(path) as stream:
        while stream.read(CHUNK):
            pass


def measure(mode: str, source: Path, dest: Path, limit: int) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(source), str(dest), str(limit)],
        capture_output=True, text=True, check=True,
    ).stdout
    result = json.loads(output)
    result["out_bytes"] = dest.stat().st_size
    if mode not in ("copy", "tar"):
        check_xz(dest)
    dest.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--lzma-mib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where files go (default: tmp)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "SRC", "DST", "LIMIT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, source, dest, limit = args.child
        child(mode, Path(source), Path(dest), int(limit))
        return

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        source, dest = Path(folder) / "weights.bin", Path(folder) / "out"
        with source.open("wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(CHUNK))
        print(f"{args.size_mib} MiB of random bytes in {folder}; median of {args.repeat}; "
              f"lzma-* on the first {args.lzma_mib} MiB\n")
        print(f"{'mode':10} {'MB/s':>8} {'vs copy':>8} {'out/in':>9} {'peak RSS':>9}  what")
        copy_rate = None
        for mode in args.modes.split(","):
            size = (args.lzma_mib if mode.startswith("lzma") else args.size_mib) * CHUNK
            runs = [measure(mode, source, dest, size) for _ in range(args.repeat)]
            rate = size / statistics.median(run["seconds"] for run in runs) / 1e6
            copy_rate = rate if mode == "copy" else copy_rate
            versus = f"{rate / copy_rate:7.2f}x" if copy_rate else f"{'':8}"
            growth = runs[0]["out_bytes"] / size
            rss = max(run["rss_kib"] for run in runs) / 1024
            print(f"{mode:10} {rate:8.1f} {versus} {growth:9.5f} {rss:6.0f} MiB  {MODES[mode]}",
                  flush=True)


if __name__ == "__main__":
    main()
