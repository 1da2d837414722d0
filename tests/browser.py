"""Headless Chromium for the tests that must see a page render: the HTML report, ``dvc plots show``.

Chromium runs as a real browser would (Debian's ``chromium``, installed by ``make setup``), headless,
with a fresh profile and no network: every host name fails to resolve and any proxy use goes to a
closed loopback port, so a page that loads a script from a CDN renders blank here, as it would
offline. Tests skip, saying why, where Chromium is not installed.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-extensions", "--disable-sync", "--hide-scrollbars"]
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
           "--proxy-bypass-list=<-loopback>"]
TIMEOUT_S = 120


def chromium() -> str:
    """The browser's path; skips the test where none is installed."""
    for name in NAMES:
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium is not installed (make setup installs Debian's chromium where it may)")


def _run(url: str, *args: str, budget_ms: int, size: tuple[int, int]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [chromium(), *FLAGS, *OFFLINE, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
               f"--window-size={size[0]},{size[1]}", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)


def dom(page: Path, budget_ms: int = 15000, size: tuple[int, int] = (1400, 1000)) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``)."""
    res = _run(page.resolve().as_uri(), "--dump-dom", budget_ms=budget_ms, size=size)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def screenshot(page: Path, out: Path, budget_ms: int = 15000, size: tuple[int, int] = (1400, 1000)) -> np.ndarray:
    """The rendered page as an RGB array (also written to ``out``)."""
    res = _run(page.resolve().as_uri(), f"--screenshot={out.resolve()}", budget_ms=budget_ms, size=size)
    assert res.returncode == 0 and out.is_file(), res.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB"))


def ink(image: np.ndarray, box: tuple[int, int, int, int] | None = None) -> float:
    """Share of the pixels (in ``box``: left, top, right, bottom) that are not near-white."""
    if box is not None:
        left, top, right, bottom = box
        image = image[top:bottom, left:right]
    return float((image.min(axis=-1) < 200).mean())


def colours(image: np.ndarray) -> int:
    """How many distinct colours the image has (a drawn figure has many, a blank or flat page few)."""
    return len(np.unique(image.reshape(-1, image.shape[-1]), axis=0))
