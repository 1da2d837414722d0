"""Pick a free GPU for this process when no scheduler pinned one (local multi-GPU runs).

``snakemake --profile profiles/local`` caps the GPU jobs running at once at the number of
GPUs (``resources: gpu=N``), but every job still sees every GPU and would use ``cuda:0``.
:func:`claim_gpu` gives each concurrent job a different device: slot ``i`` is an exclusive
``fcntl.flock`` on ``<lock_dir>/gpu<i>.lock``; the first free slot wins and
``CUDA_VISIBLE_DEVICES`` is set to it. The kernel drops the lock when the process exits,
however it exits (SIGKILL included), so a crashed job never leaves a slot taken.

Call it before CUDA is initialised (before the first ``torch.cuda`` call)::

    slot = claim_gpu()        # None: a scheduler (Slurm) set CUDA_VISIBLE_DEVICES, or no GPUs
    ...                       # the lock is held until slot.release() or the process ends

Used by :func:`pipeline.models.backbone.default_device`; no torch import here.
"""
from __future__ import annotations

import fcntl
import glob
import os
import re
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

ENV_GPUS = "PIPELINE_GPUS"                  # number of GPUs, overriding the /dev/nvidiaN count
ENV_LOCK_DIR = "PIPELINE_GPU_LOCK_DIR"      # where the slot lock files live


class NoFreeGpu(RuntimeError):
    """Every slot stayed taken until the timeout."""


@dataclass
class GpuSlot:
    """A claimed GPU: ``index`` is the device number written into CUDA_VISIBLE_DEVICES."""

    index: int
    path: Path
    _fd: int | None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> GpuSlot:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def gpu_count(environ: MutableMapping[str, str] = os.environ) -> int:
    """``PIPELINE_GPUS`` if set, else the number of ``/dev/nvidia<N>`` devices."""
    requested = environ.get(ENV_GPUS, "").strip()
    if requested:
        return int(requested)
    return sum(1 for d in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", d))


def default_lock_dir(environ: MutableMapping[str, str] = os.environ) -> Path:
    return Path(environ.get(ENV_LOCK_DIR) or f"/tmp/robust-ft-pipeline-gpu-slots-{os.getuid()}")


def try_claim(index: int, lock_dir: Path) -> GpuSlot | None:
    """Slot ``index`` if it is free (non-blocking), else None."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"gpu{index}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)   # not inherited by exec'd children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())   # who holds it, for humans
    return GpuSlot(index, path, fd)


def claim_gpu(n_gpus: int | None = None, lock_dir: str | Path | None = None, timeout: float | None = None,
              poll: float = 0.5, environ: MutableMapping[str, str] = os.environ) -> GpuSlot | None:
    """Claim the first free GPU slot and set ``CUDA_VISIBLE_DEVICES`` to it in ``environ``.

    Returns None, claiming nothing, when ``CUDA_VISIBLE_DEVICES`` is already set (a scheduler
    or the user chose) or there are no GPUs. Waits for a slot to free up (``timeout`` seconds
    at most, None: no limit; 0: do not wait) and then raises :class:`NoFreeGpu`.
    """
    if environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return None
    n = gpu_count(environ) if n_gpus is None else n_gpus
    if n <= 0:
        return None
    root = Path(lock_dir) if lock_dir is not None else default_lock_dir(environ)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        for i in range(n):
            slot = try_claim(i, root)
            if slot is not None:
                environ["CUDA_VISIBLE_DEVICES"] = str(i)
                return slot
        if deadline is not None and time.monotonic() >= deadline:
            raise NoFreeGpu(f"all {n} GPU slots in {root} are taken")
        time.sleep(poll)
