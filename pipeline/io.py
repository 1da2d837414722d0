"""Atomic file output, logging and small helpers shared by every stage.

A stage never leaves a partially written file at an output path: it writes to a
temporary sibling and renames it into place (``os.replace`` is atomic on POSIX).
A job killed mid-write (SIGKILL, the out-of-memory killer, a node lost) therefore leaves
only ``.tmp-<name>-XXXXXXXX`` debris, which neither Snakemake nor DVC takes for a finished
output, and which the next write of the same output removes (both runners let one job at a
time write an output).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("pipeline")


class InputError(ValueError):
    """A file or entry the pipeline was given that cannot be used (a broken checkpoint, say); ``str(err)`` is one
    line naming it, which the command line prints without a traceback."""


class Preempted(RuntimeError):
    """SIGTERM / SIGUSR1 arrived: a checkpoint was written; running the job again resumes it."""


def _tmp_prefix(path: Path) -> str:
    return f".tmp-{path.name}-"


def remove_debris(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writes of ``path`` left beside it (its temporary siblings); return what was removed.

    Only names this module makes for ``path``: the prefix and exactly the 8 characters ``tempfile`` adds.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(re.escape(_tmp_prefix(path)) + r"[a-z0-9_]{8}")
    removed = []
    for entry in path.parent.iterdir():
        if pattern.fullmatch(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        log.info("removed %d temporary file(s) a killed write of %s left: %s", len(removed), path,
                 ", ".join(p.name for p in removed))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    What an earlier, killed write of ``path`` left is removed first (:func:`remove_debris`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_debris(path)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create private (0600/0700) entries; give them the usual umask mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
    try:
        yield tmp
        if is_dir:
            # Snakemake dates a directory output by this file when present, else by the
            # directory's own mtime, which DVC changes whenever it relinks the contents.
            # Not empty: DVC re-creates empty files instead of hardlinking them.
            (tmp / ".snakemake_timestamp").write_text("mtime carrier for Snakemake\n")
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, df) -> None:
    """Write a DataFrame as CSV, atomically, without the index."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write tensors as a safetensors file, atomically and byte-identically for identical inputs.

    safetensors writes the metadata map in hash order, which changes from process to process;
    the header is rewritten with sorted metadata (same length, same offsets, a valid file).
    """
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)   # the format pads the header to 8 bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(memoryview(blob)[8 + size:])


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an ``.npz`` (``np.load(path, allow_pickle=False)`` reads it), atomically and byte-identically.

    ``np.savez_compressed`` stamps each member with the current time; here every member gets a
    fixed date and the names are sorted, so the same arrays give the same file.
    """
    import io
    import zipfile

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted (a rule's log file,
    or a test's capture that replaces it), not to the stream that was current when it was made."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr, which each rule redirects to its log file."""
    root = logging.getLogger()
    if not any(getattr(h, "_pipeline", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._pipeline = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def progress(iterable, **kwargs):
    """tqdm that switches itself off when stderr is not a terminal (Slurm, rule logs)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None, dynamic_ncols=True, **kwargs)
