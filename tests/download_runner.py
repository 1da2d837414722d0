"""Run :func:`pipeline.download.datasets.ensure_parts` as its own process, as a download job would.

``python tests/download_runner.py MANIFEST ROOT LOCK PART...``: exits 0 once the parts are in
place; on a download error prints its one line to stderr and exits with its ``exit_code``. Used
by the tests that kill a transfer midway (SIGKILL) and that check the exit status.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.download.datasets import ensure_parts
from pipeline.download.errors import DownloadError
from pipeline.download.manifest import load_manifest
from pipeline.download.transfer import TransferOptions


def main(argv: list[str]) -> int:
    manifest, root, lock, *parts = argv
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    options = TransferOptions(timeout=5.0, rounds=2, backoff=0.0, chunk_size=16 * 1024, log_every=0.5,
                              progress_bar=False)
    try:
        ensure_parts(parts, Path(root), lock=Path(lock), manifest=load_manifest(manifest), options=options)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
