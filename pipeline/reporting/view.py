"""What the table layouts read: the summary with its intervals, comparisons and effective robustness.

:func:`build_view` adds to every accuracy of the summary (:func:`pipeline.reporting.aggregate.summarise`)
its 95% bootstrap interval (``ci_low``, ``ci_high``), to every row's headline ID and OOD accuracy
the paired difference from the baseline row (``delta``, ``delta_low``, ``delta_high``,
``significant``), and each row's effective robustness as quantity ``er``
(:mod:`pipeline.reporting.robustness`). The intervals come from the per-example predictions
(:mod:`pipeline.reporting.store`, :mod:`pipeline.reporting.bootstrap`).

*Headline* quantities: what a paper reports per dataset as ID and OOD accuracy. By default
``id_acc`` and ``ood_acc`` (the mean over OOD domains); ``report.quantities`` overrides them
per dataset, e.g. Waterbirds' worst-group accuracy ``ood_acc_wg`` or FMoW's ``ood_acc/Africa``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.reporting.aggregate import headline, parse_quantity
from pipeline.reporting.bootstrap import Comparison, Stat, interval, mean_of, paired
from pipeline.reporting.cells import Cell, published_cell
from pipeline.reporting.reference import AVERAGE, Published, RefKey
from pipeline.reporting.robustness import effective_robustness
from pipeline.reporting.store import PredictionStore, make_key

# Official metrics that are the worst domain's accuracy when the dataset's domains are its
# groups (Waterbirds) or regions (FMoW): bootstrapped as the minimum over domains.
WORST_OVER_DOMAINS = ("acc_wg", "acc_worst_region")
# Rows compared with the baseline: every selection rule that is valid (not the oracles).
COMPARED_KINDS = ("zeroshot", "lp", "ft", "soup", "wise_ft", "wise_ft_fixed")
SIDES = ("id", "ood")


@dataclass
class ReportView:
    summary: pd.DataFrame            # aggregate.summarise, then the columns added by build_view
    rows: pd.DataFrame               # aggregate.assign_rows: every tidy row of every table row
    store: PredictionStore
    cfg: dict                        # report params with defaults
    methods: list[str]
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    chosen: pd.DataFrame = field(default_factory=pd.DataFrame)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    reference: dict[RefKey, Published] = field(default_factory=dict)
    er_fit: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Experiment order of datasets and models (params.yaml), which the tables follow.
    datasets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    # The recipe card, resolved (pipeline/stages/recipe.py: paper, config, rows); empty without report.recipe.
    recipe: dict = field(default_factory=dict)
    # Every tidy row (all grid points, not only the chosen ones) and the similarity stage's rows, for the
    # layouts that show every grid point (pipeline.reporting.hyperparams).
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    similarity: pd.DataFrame = field(default_factory=pd.DataFrame)

    # --- lookups -------------------------------------------------------------------------
    def pairs(self) -> list[tuple[str, str]]:
        """(dataset, model) pairs with results, in the experiment's order."""
        found = list(self.summary[["dataset", "model"]].drop_duplicates().itertuples(index=False, name=None))

        def rank(names: list[str], x: str) -> tuple[int, str]:
            return (names.index(x) if x in names else len(names), x)

        return sorted(found, key=lambda p: (rank(self.datasets, p[0]), rank(self.models, p[1])))

    def table_rows(self, dataset: str, model: str, kinds: tuple[str, ...]) -> pd.DataFrame:
        """One line per table row of a dataset/model (kind, method, row, label), in table order."""
        s = self.summary
        part = s[(s["dataset"] == dataset) & (s["model"] == model) & s["kind"].isin(kinds)]
        return part.drop_duplicates("row")[["kind", "method", "row", "label"]]

    def _hit(self, dataset: str, model: str, row: str, quantity: str) -> pd.Series | None:
        index = self.__dict__.get("_hit_index")
        if index is None or index[0] is not self.summary:   # rebuilt when build_view replaces the summary
            keys = ["dataset", "model", "row", "quantity"]
            index = (self.summary, {k: r for k, (_, r) in zip(
                self.summary[keys].itertuples(index=False, name=None), self.summary.iterrows())})
            self._hit_index = index
        return index[1].get((dataset, model, row, quantity))

    def cell(self, dataset: str, model: str, row: str, quantity: str, mark: bool = False) -> Cell:
        """An accuracy cell: mean over seeds, interval, and (``mark``) its significance against the baseline."""
        r = self._hit(dataset, model, row, quantity)
        if r is None:
            return Cell()
        sign = ""
        if mark and bool(r.get("significant", False)):
            sign = "+" if r["delta"] > 0 else "-"
        return Cell(value=float(r["mean"]), low=float(r.get("ci_low", math.nan)),
                    high=float(r.get("ci_high", math.nan)), mark=sign)

    def number(self, dataset: str, model: str, row: str, quantity: str, digits: int = 1) -> Cell:
        """A plain number cell (ECE, effective robustness), in points."""
        r = self._hit(dataset, model, row, quantity)
        return Cell("number", value=math.nan if r is None else float(r["mean"]), digits=digits)

    def published(self, dataset: str, model: str, method: str, side: str, ours: Cell) -> Cell | None:
        pub = self.reference.get(RefKey(dataset, model, method, side))
        return published_cell(None if pub is None else pub.value, ours)

    def sources(self) -> list[str]:
        """The reference papers the tables cite, each once."""
        return sorted({p.paper for p in self.reference.values()})

    # --- statistics of per-example correctness ----------------------------------------------
    def _runs(self, dataset: str, model: str, row: str) -> pd.DataFrame:
        """One tidy row per seed of a table row (its method, grid point, seed, alpha), by seed."""
        if not hasattr(self, "_run_index"):
            first = self.rows.drop_duplicates(["dataset", "model", "row", "seed"]).sort_values("seed", kind="stable")
            self._run_index = dict(iter(first.groupby(["dataset", "model", "row"], sort=False)))
        return self._run_index.get((dataset, model, row), self.rows.iloc[:0])

    def seeds(self, dataset: str, model: str, row: str) -> list[int]:
        return [int(x) for x in self._runs(dataset, model, row)["seed"]]

    def stat(self, dataset: str, model: str, row: str, quantity: str, seeds: list[int] | None = None
             ) -> Stat | None:
        """The quantity as a statistic of the row's per-example correctness, or None if it is not one."""
        side, metric, domain = parse_quantity(quantity)
        if side not in SIDES or (metric != "acc" and metric not in WORST_OVER_DOMAINS):
            return None
        runs = self._runs(dataset, model, row)
        if seeds is not None:
            runs = runs[runs["seed"].isin(seeds)]
        if runs.empty:
            return None
        keys = [make_key(x.dataset, x.model, x.method, x.hp, x.seed, x.alpha) for x in runs.itertuples(index=False)]
        split = self.cfg["id_split"] if side == "id" else self.cfg["ood_split"]

        def leaf(dom: str) -> Stat:
            return Stat.leaf(np.stack([self.store.correct(k, split, dom) for k in keys]))

        if domain is not None:
            return leaf(domain)
        if metric == "acc" and side == "id":
            return leaf("all")
        children = [leaf(d) for d in self.store.domains(keys[0], split)]
        if metric == "acc":
            return mean_of(children)
        return children[0] if len(children) == 1 else Stat("min", children=children)

    def interval(self, stat: Stat | None) -> tuple[float, float]:
        return (math.nan, math.nan) if stat is None else interval(stat, self.cfg.get("bootstrap"))

    def compare(self, dataset: str, model: str, row: str, base: str, quantity: str) -> Comparison | None:
        """Paired difference row - base: same seeds (a single-run side is used for each seed of the other).

        None when either row lacks the quantity, e.g. the OOD side of a dataset without OOD splits.
        """
        if self._hit(dataset, model, row, quantity) is None or self._hit(dataset, model, base, quantity) is None:
            return None
        sa, sb = self.seeds(dataset, model, row), self.seeds(dataset, model, base)
        if len(sa) > 1 and len(sb) > 1:
            sa = sb = sorted(set(sa) & set(sb))
            if not sa:
                return None
        a, b = self.stat(dataset, model, row, quantity, sa), self.stat(dataset, model, base, quantity, sb)
        if a is None or b is None:
            return None
        if a.n_seeds != b.n_seeds:
            a, b = (a.repeat_seeds(b.n_seeds), b) if a.n_seeds == 1 else (a, b.repeat_seeds(a.n_seeds))
        return paired(a, b, self.cfg.get("bootstrap"))

    def average_cell(self, parts: list[tuple[str, str, str, str]]) -> Cell:
        """Mean of several cells (datasets, models) and its interval: each part resampled, seeds shared."""
        cache = self.__dict__.setdefault("_averages", {})
        key = tuple(parts)
        if key not in cache:
            cache[key] = self._average_cell(parts)
        return cache[key]

    def _average_cell(self, parts: list[tuple[str, str, str, str]]) -> Cell:
        means = [self._hit(*p) for p in parts]
        if not parts or any(m is None for m in means):
            return Cell()
        value = float(np.mean([m["mean"] for m in means]))
        stats_ = [self.stat(*p) for p in parts]
        low = high = math.nan
        if all(s is not None for s in stats_) and len({s.n_seeds for s in stats_}) == 1:
            low, high = self.interval(mean_of(stats_))
        return Cell(value=value, low=low, high=high)

    def average_published(self, model: str, method: str, side: str, ours: Cell) -> Cell | None:
        return self.published(AVERAGE, model, method, side, ours)


def _baseline_row(view: ReportView, dataset: str, model: str) -> str | None:
    base = view.cfg.get("baseline")
    if not base:
        return None
    rows = view.table_rows(dataset, model, ("zeroshot", "lp", "ft"))
    hit = rows[rows["method"] == base]
    return None if hit.empty else str(hit["row"].iloc[0])


def build_view(view: ReportView) -> ReportView:
    """Add intervals, baseline comparisons and effective robustness to ``view.summary``."""
    s = view.summary.copy()
    s["ci_low"], s["ci_high"] = math.nan, math.nan
    for col in ("delta", "delta_low", "delta_high"):
        s[col] = math.nan
    s["significant"] = False
    s["baseline"] = ""
    for i, r in enumerate(s.itertuples(index=False)):
        if r.quantity.startswith(SIDES):
            s.iloc[i, s.columns.get_loc("ci_low")], s.iloc[i, s.columns.get_loc("ci_high")] = view.interval(
                view.stat(r.dataset, r.model, r.row, r.quantity))
    for dataset, model in view.pairs():
        base = _baseline_row(view, dataset, model)
        if base is None:
            continue
        for r in view.table_rows(dataset, model, COMPARED_KINDS).itertuples(index=False):
            if r.row == base:
                continue
            for side in SIDES:
                q = headline(view.cfg, dataset, side)
                c = view.compare(dataset, model, r.row, base, q)
                if c is None:
                    continue
                mask = ((s["dataset"] == dataset) & (s["model"] == model) & (s["row"] == r.row) & (s["quantity"] == q))
                s.loc[mask, ["delta", "delta_low", "delta_high"]] = [c.delta, c.low, c.high]
                s.loc[mask, "significant"] = c.significant
                s.loc[mask, "baseline"] = base
    view.summary = s
    fit, er = effective_robustness(s, view.cfg)
    view.er_fit = fit
    if not er.empty:
        view.summary = pd.concat([s, er], ignore_index=True)
    return view
