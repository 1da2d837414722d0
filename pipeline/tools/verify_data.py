"""``python -m pipeline verify-data [DIR ...]``: check prepared datasets against the index they were written with.

Every directory (default: each ``data/prepared/*`` holding an ``info.json``) is opened with the
cheap checks of :mod:`pipeline.data.integrity` (format, ``info.json``'s checksum, file sizes, split
lists, row counts, labels against the class count, every split's index against its shard), and every
file is hashed and compared with the SHA-256 recorded at preparation. One line per dataset: ``OK``
with its counts, or the error naming the file and what to do. Exit 1 if any dataset fails.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.data.errors import PreparedDataError
from pipeline.data.shards import PreparedDataset
from pipeline.stages.registry import PREPARED


def verify(root: Path) -> str:
    """``OK ...`` for an intact dataset; raises :class:`PreparedDataError` (or FileNotFoundError) otherwise."""
    data = PreparedDataset(root, verify=True)
    for name in data.info["splits"]:
        data.split(name)   # the index checks
    images = sum(int(n) for n in data.info["splits"].values())
    size = sum(int(r["bytes"]) for r in data.info["records"].values())
    storage = data.info["storage"]
    return (f"OK: {len(data.info['splits'])} splits, {images} images, {data.num_classes} classes, "
            f"{size / 1e6:.1f} MB ({storage['encoding']}, shorter side <= {storage['size']}); checksums match")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline verify-data", description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="*", help="prepared dataset directories (default: every data/prepared/*)")
    args = p.parse_args(argv)
    parent = Path(PREPARED.format(dataset="x")).parent
    dirs = [Path(d) for d in args.dirs] or sorted(d for d in parent.glob("*") if (d / "info.json").is_file())
    if not dirs:
        print(f"no prepared datasets under {parent}/", file=sys.stderr)
        return 1
    failed = 0
    for d in dirs:
        try:
            print(f"{d}: {verify(d)}")
        except (PreparedDataError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
