"""Layout ``recipe``: the recipe card, for every setting a paper fixes our value, the official one and its source.

The rows come resolved from the ``recipe`` stage (``results/report/recipe.json``; :mod:`pipeline.config.recipe`):
our value is what the stages use. Each difference is marked: ``kept`` with its reason, or ``differs`` when
nobody explained it (and ``stale`` when a kept difference no longer is one). Empty without ``report.recipe``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.reporting.view import ReportView

LONG = 8   # lists longer than this are shown by their ends
STATUS_TEXT = {"same": "same", "kept": "kept", "differs": "DIFFERS, unexplained", "stale": "same (kept reason stale)"}


def show(value: Any) -> str:
    """A value in one short line: ``3e-05``, ``[1e-05, 3e-05, 0.0001]``, ``71 points (model_1 ... model_71)``."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        items = [show(v) for v in value]
        if len(items) > LONG:
            return f"[{items[0]}, {items[1]}, ..., {items[-1]}] ({len(items)} values)"
        return "[" + ", ".join(items) + "]"
    if isinstance(value, Mapping):
        if value and all(isinstance(v, Mapping) for v in value.values()):
            names = list(value)
            return f"{len(names)} points ({names[0]} ... {names[-1]})" if len(names) > 1 else f"1 point ({names[0]})"
        if len(value) > LONG:
            return f"{len(value)} keys"
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def context(view: ReportView) -> dict:
    card = view.recipe or {}
    rows = []
    for r in card.get("rows", []):
        rows.append({"setting": r["where"], "ours": show(r["ours"]), "official": show(r["official"]),
                     "source": r["source"], "status": r["status"], "status_text": STATUS_TEXT[r["status"]],
                     "kept": r.get("kept") or "", "note": r.get("note") or ""})
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUS_TEXT}
    return {"title": view.cfg.get("title", ""), "paper": card.get("paper", ""), "config": card.get("config", ""),
            "card": card.get("card", ""), "rows": rows, "counts": counts}
