"""Compiling ``paper/main.tex`` into ``paper/main.pdf`` with latexmk (the ``paper`` stage's library).

latexmk runs with the paper's folder as working directory (so ``\\input{tables/...}``
and ``\\includegraphics{figures/...}`` resolve) and a temporary ``-outdir``, so aux
files never land in ``paper/``; the PDF is then moved into place atomically.
Without latexmk the build fails with an install hint and writes no PDF.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pipeline.io import atomic_path

log = logging.getLogger(__name__)

# pdfTeX derives the trailer /ID from the output path, which is a random temporary
# folder here: an empty \pdftrailerid omits it (with SOURCE_DATE_EPOCH below, the
# same sources then give the same PDF bytes).
LATEXMK = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error",
           r"-usepretex=\ifdefined\pdftrailerid\pdftrailerid{}\fi"]
INSTALL_HINT = ("sudo apt-get install latexmk texlive-latex-recommended texlive-fonts-recommended"
                " (or `make setup`)")
LOG_TAIL_LINES = 40
TIMEOUT_S = 600


class PaperError(RuntimeError):
    """The paper could not be built; the message says why and what to do."""


def _log_tail(log_file: Path, output: str) -> str:
    """Last lines of the LaTeX log (the error is at its end), else of latexmk's output."""
    text = log_file.read_text(errors="replace") if log_file.exists() else output
    return "\n".join(text.rstrip().splitlines()[-LOG_TAIL_LINES:])


def build_pdf(main_tex: str | Path, pdf: str | Path) -> None:
    """Compile ``main_tex`` with latexmk and move the PDF to ``pdf``; raise :class:`PaperError`."""
    main_tex = Path(main_tex)
    if shutil.which("latexmk") is None:
        raise PaperError(f"latexmk not found on PATH: the LaTeX sources ({main_tex} and the files it inputs) "
                         f"are written, but no PDF was built. Install LaTeX with: {INSTALL_HINT}.")
    env = dict(os.environ)
    # pdfTeX then stamps a fixed date instead of the build time.
    env.setdefault("SOURCE_DATE_EPOCH", "0")
    with tempfile.TemporaryDirectory(prefix=".latex-") as outdir:
        cmd = [*LATEXMK, f"-outdir={outdir}", main_tex.name]
        log.info("%s (in %s)", " ".join(cmd), main_tex.parent)
        try:
            proc = subprocess.run(cmd, cwd=main_tex.parent, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise PaperError(f"latexmk did not finish within {TIMEOUT_S} s on {main_tex}") from e
        built = Path(outdir) / (main_tex.stem + ".pdf")
        if proc.returncode != 0 or not built.is_file():
            tail = _log_tail(Path(outdir) / (main_tex.stem + ".log"), proc.stdout + proc.stderr)
            raise PaperError(f"latexmk failed on {main_tex} (exit {proc.returncode}); end of the LaTeX log:\n{tail}")
        with atomic_path(pdf) as tmp:
            shutil.move(built, tmp)
