"""Stage ``recipe``: the config's recipe card, every row resolved as the stages resolve it.

Inputs: ``card``: the card ``report.recipe`` names (``paper/recipes/<config>.yaml``: per setting a paper
fixes, the official value and its source; :mod:`pipeline.config.recipe`).
Outputs: ``results/report/recipe.json``: the card's paper and config, and per row the setting and its
context, our value (resolved through :mod:`pipeline.config.settings`, the registries' and the sources'
defaults, never the raw YAML), the official value, its source, the note, the reason a kept difference
is kept, and the status (``same``, ``kept``, ``differs``: unexplained, ``stale``: kept but equal). The
report renders it (the ``recipe`` layout) in the paper and the HTML report.
Runs only when ``report.recipe`` is set.
Params: ``report`` and the sections a card may name: ``experiment``, ``finetune``, ``methods``,
``datasets``, ``models``, ``linear_probe``, ``wise_ft``, ``soups``.
"""
from __future__ import annotations

import logging
from collections import Counter

from pipeline.config.recipe import card_rows, load_card
from pipeline.io import write_json
from pipeline.stages.job import parse_job

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("recipe", argv)
    card = load_card(job.inputs["card"])
    rows = card_rows(job.params, card)
    write_json(job.outputs["card"], {"paper": card.paper, "config": card.config, "card": job.inputs["card"],
                                     "rows": rows})
    counts = Counter(r["status"] for r in rows)
    log.info("recipe card %s: %d rows (%s)", job.inputs["card"], len(rows),
             ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for r in rows:
        if r["status"] in ("differs", "stale"):
            log.warning("recipe: %s %s: ours %r, official %r (%s)", r["status"], r["where"], r["ours"], r["official"],
                        r["source"])
    return 0
