"""Import-time fixes that let the pinned stack run on a CPU-only torch.

* The PyPI ``torchvision`` wheel links CUDA libraries; on CPU torch its C++ ops
  never register, and ``torchvision._meta_registrations`` then fails on import
  (``operator torchvision::nms does not exist``). Defining the two op schemas
  first makes the pure-Python parts (transforms, models) importable. Where the
  real extension loads (CUDA torch on a GPU node) this does nothing.
* ``wilds`` averages over groups with ``torch_scatter``, which has no wheel for
  this torch. A pure-torch ``avg_over_groups`` replaces it (same outputs,
  empty groups included).
* glibc hands every allocation over 32 MiB back to the kernel when it is freed,
  so each training step page-faults its batch tensors (77 MB for 128 images at
  224 px) in again: 2-3x slower batch preparation on CPU. Raising its mmap and
  trim thresholds keeps such buffers on the heap (:func:`keep_buffers_on_heap`).

Call :func:`apply` before importing timm or wilds.
"""
from __future__ import annotations

import ctypes
import os
import sys

import torch

_TV_LIB: torch.library.Library | None = None
_applied = False


def ensure_torchvision() -> bool:
    """Make ``import torchvision`` work; returns True if the shim was needed."""
    global _TV_LIB
    try:
        import torchvision
        return False
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _TV_LIB = torch.library.Library("torchvision", "DEF")
    _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TV_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401
    return True


def avg_over_groups(v: torch.Tensor, g: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch replacement for ``wilds.common.utils.avg_over_groups``."""
    counts = torch.bincount(g, minlength=n_groups)[:n_groups].to(v.device)
    sums = torch.zeros(n_groups, dtype=v.dtype, device=v.device).index_add_(0, g, v)
    return sums / counts.clamp(min=1).to(v.dtype), counts.float()


def patch_wilds() -> None:
    """Point every wilds module that imported ``avg_over_groups`` at the torch version."""
    import importlib

    for mod_name in ("wilds.common.utils", "wilds.common.metrics.metric",
                     "wilds.common.metrics.all_metrics", "wilds.common.metrics.loss"):
        mod = importlib.import_module(mod_name)
        if hasattr(mod, "avg_over_groups"):
            mod.avg_over_groups = avg_over_groups


def keep_buffers_on_heap(limit: int = 1 << 30) -> bool:
    """Let glibc reuse freed buffers up to ``limit`` bytes instead of unmapping them; False off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3   # mallopt parameters from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, limit))


def apply() -> None:
    """Idempotent: offline-friendly env defaults, heap-kept buffers and the torchvision shim."""
    global _applied
    if _applied:
        return
    os.environ.setdefault("OUTDATED_IGNORE", "1")  # wilds/ogb would query PyPI
    keep_buffers_on_heap()
    ensure_torchvision()
    _applied = True
