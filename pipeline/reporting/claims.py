"""Each paper's headline claim, checked on the results: the numbers, their intervals and a verdict.

A claim is data (:data:`CLAIMS`): the paper, the statement, the comparisons that make it true
(:class:`Test`: two rows, ID or OOD, a relation and a tolerance for "about as accurate"), and the
condition the paper states for it with the comparisons that measure that condition on these data.
One evaluator (:func:`evaluate`) turns every claim into a verdict per dataset/model from the report's
paired bootstrap (:meth:`pipeline.reporting.view.ReportView.compare`: the difference of two rows on
the same seeds and test examples, with its 95% interval):

* ``>``  holds when the interval of ``a - b`` lies above 0, does not hold when it lies below 0;
* ``>=`` (within t points) holds when it lies above ``-t``, does not hold when it lies below ``-t``;
* ``~=`` (within t points) holds when it lies inside ``(-t, t)``, does not hold when it lies outside;
* otherwise the test is *inconclusive*: the interval straddles the bound.

A claim holds when all its tests hold, does not hold when one does not, and is inconclusive
otherwise; its condition likewise. Methods are named by role (``ft``, ``adamw``, ``sgd``,
``freeze_embed``, ``lpft``, ``spd``): each role is the method of the same name in
:data:`ROLE_DEFAULTS` unless ``report.claims`` names another (a config whose AdamW run is called
``adamw``); a claim whose methods are not in the experiment is listed as not evaluated.

WiSE-FT's claim is about points of the alpha curve, which are not table rows: they join the view as
rows ``<method>@alpha<a>`` built from the grid's tidy rows and predictions, so the same paired
bootstrap compares them. The interior alpha it tests is the one best on OOD val (ID val when the
dataset has no OOD val split), so the test data never choose it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pandas as pd

from pipeline.reporting import names
from pipeline.reporting.aggregate import SELECTION_DEFAULTS, headline, per_seed_scores
from pipeline.reporting.view import ReportView

HOLDS, FAILS, INCONCLUSIVE, NOT_EVALUATED = "holds", "does not hold", "inconclusive", "not evaluated"
# The method each role names unless report.claims says otherwise: the demo's methods (params.yaml).
ROLE_DEFAULTS = {"ft": "ft_adamw", "adamw": "ft_adamw", "sgd": "ft_sgd", "freeze_embed": "freeze_embed",
                 "lpft": "lpft", "spd": "spd"}
ROLE_DOCS = {"ft": "the full fine-tuning LP-FT is compared with", "adamw": "full fine-tuning with AdamW",
             "sgd": "full fine-tuning with SGD", "freeze_embed": "SGD with the embedding frozen",
             "lpft": "LP-FT", "spd": "Adam with selective projection decay"}
LP, ALPHA = "lp", "alpha"
INTERIOR = "interior"   # the interior alpha of the WiSE-FT grid chosen on validation data
RELATIONS = {">": "more accurate than", ">=": "at least as accurate as", "~=": "as accurate as"}
GRAD_RATIO = "grad_ratio"


@dataclass(frozen=True)
class Operand:
    """A row of the comparison: a role's method, the linear probe, or a point of the WiSE-FT curve."""

    role: str                       # a role of ROLE_DEFAULTS, LP or ALPHA
    alpha: float | str | None = None   # ALPHA: a grid value or INTERIOR


@dataclass(frozen=True)
class Test:
    a: Operand
    b: Operand
    side: str                       # "id" or "ood": the dataset's headline quantity of that side
    relation: str                   # ">", ">=" or "~="
    tolerance: float = 0.0          # points, for ">=" and "~="


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    statement: str
    tests: tuple[Test, ...]
    condition: str                  # the paper's stated condition for the claim, in words
    condition_tests: tuple[Test | str, ...] = ()   # comparisons, or GRAD_RATIO (embedding vs rest)
    per_wise_ft: bool = False       # one instance per WiSE-FT method


def _row(role: str) -> Operand:
    return Operand(role)


def _alpha(a: float | str) -> Operand:
    return Operand(ALPHA, a)


CLAIMS: tuple[Claim, ...] = (
    Claim("lpft", "Kumar et al. 2022 (LP-FT)", "LP-FT is more accurate OOD than full fine-tuning.",
          (Test(_row("lpft"), _row("ft"), "ood", ">"),),
          "the pretrained features are good under the shift, so that fine-tuning distorts them while the "
          "linear probe keeps them: LP is at least as accurate OOD as fine-tuning",
          (Test(_row(LP), _row("ft"), "ood", ">="),)),
    Claim("freeze_embed", "Kumar et al. 2024 (freeze-embed)",
          "SGD with the embedding frozen is about as accurate OOD as AdamW and more accurate than SGD.",
          (Test(_row("freeze_embed"), _row("adamw"), "ood", "~=", 1.0),
           Test(_row("freeze_embed"), _row("sgd"), "ood", ">")),
          "SGD falls behind AdamW, and the embedding layer's gradients are larger than the rest of the "
          "backbone's at the start of fine-tuning (the gap freezing the embedding closes)",
          (Test(_row("adamw"), _row("sgd"), "ood", ">"), GRAD_RATIO)),
    Claim("wise_ft", "Wortsman et al. 2022 (WiSE-FT)",
          "Some mixing weight alpha strictly between 0 and 1 is more accurate OOD than both endpoints.",
          (Test(_alpha(INTERIOR), _alpha(0.0), "ood", ">"), Test(_alpha(INTERIOR), _alpha(1.0), "ood", ">")),
          "the pretrained end (alpha = 0) is a robust model in its own right, as zero-shot CLIP is: its OOD "
          "accuracy is within 5 points of the fine-tuned end's or above it",
          (Test(_alpha(0.0), _alpha(1.0), "ood", ">=", 5.0),), per_wise_ft=True),
    Claim("spd", "Tian et al. 2024 (SPD)",
          "Selective projection decay is at least as accurate as AdamW, ID and OOD (within 1 point).",
          (Test(_row("spd"), _row("adamw"), "id", ">=", 1.0), Test(_row("spd"), _row("adamw"), "ood", ">=", 1.0)),
          "staying near the pretrained weights pays, i.e. the pretrained model is robust under the shift: "
          "LP is at least as accurate OOD as fine-tuning",
          (Test(_row(LP), _row("adamw"), "ood", ">="),)),
)


# --- verdicts -------------------------------------------------------------------------------
def verdict(relation: str, low: float, high: float, tolerance: float = 0.0) -> str:
    """The verdict of ``a <relation> b`` from the interval [low, high] of ``a - b`` (points or fractions alike)."""
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    t = abs(tolerance)
    if relation == ">":
        return HOLDS if low > 0 else FAILS if high < 0 else INCONCLUSIVE
    if relation == ">=":
        return HOLDS if low > -t else FAILS if high < -t else INCONCLUSIVE
    if relation == "~=":
        return HOLDS if -t < low and high < t else FAILS if low > t or high < -t else INCONCLUSIVE
    raise ValueError(f"unknown relation {relation!r} (one of {', '.join(RELATIONS)})")


def combine(verdicts: list[str]) -> str:
    """All hold: holds; any does not: does not hold; else inconclusive (nothing to combine: not evaluated)."""
    if not verdicts:
        return NOT_EVALUATED
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


# --- results --------------------------------------------------------------------------------
@dataclass
class Value:
    label: str
    mean: float = math.nan          # percent
    low: float = math.nan
    high: float = math.nan


@dataclass
class Check:
    """One evaluated test (values in percent; ``b`` None for a measured ratio)."""

    text: str
    a: Value
    b: Value | None
    delta: float = math.nan
    low: float = math.nan
    high: float = math.nan
    relation: str = ">"
    tolerance: float = 0.0
    verdict: str = INCONCLUSIVE


@dataclass
class ClaimResult:
    claim: Claim
    dataset: str
    model: str
    instance: str = ""              # the WiSE-FT method, for per_wise_ft claims
    checks: list[Check] = field(default_factory=list)
    condition_checks: list[Check] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    note: str = ""
    instance_label: str = ""        # the WiSE-FT method's display name

    @property
    def verdict(self) -> str:
        return NOT_EVALUATED if self.missing else combine([c.verdict for c in self.checks])

    @property
    def condition_verdict(self) -> str:
        return NOT_EVALUATED if self.missing else combine([c.verdict for c in self.condition_checks])


def roles(cfg: dict) -> dict[str, str]:
    """Role -> method: :data:`ROLE_DEFAULTS` with ``report.claims`` on top."""
    return {**ROLE_DEFAULTS, **(cfg.get("claims") or {})}


def grad_ratio(norms: pd.DataFrame, dataset: str, model: str) -> float:
    """RMS gradient per parameter of the embedding groups over that of the rest of the backbone (head left out)."""
    if norms is None or norms.empty or "embed" not in norms:
        return math.nan
    part = norms
    for key, value in (("dataset", dataset), ("model", model)):
        if key in part:
            part = part[part[key] == value]
    part = part[part["n_params"] > 0].sort_values("index")
    if len(part) < 3:
        return math.nan
    body = part.iloc[:-1]                      # the last group is the head
    embed = body["embed"].astype(bool)

    def rms(p: pd.DataFrame) -> float:
        return math.sqrt(float((p["grad_norm"] ** 2).sum()) / float(p["n_params"].sum()))

    if not embed.any() or embed.all():
        return math.nan
    return rms(body[embed]) / rms(body[~embed])


class Evaluator:
    """Evaluates :data:`CLAIMS` on a report view (after :func:`pipeline.reporting.view.build_view`)."""

    def __init__(self, view: ReportView, results: pd.DataFrame, grad_norms: pd.DataFrame | None = None):
        self.view, self.results, self.norms = view, results, grad_norms
        self.roles = roles(view.cfg)
        self.cfg = {**SELECTION_DEFAULTS, **view.cfg}
        self.grid = self._grid()
        self.view = self._with_alpha_rows(view)

    # -- the WiSE-FT grid as rows of the view
    def _grid(self) -> pd.DataFrame:
        """The tidy rows of the WiSE-FT alpha grid at each method's chosen grid point, as rows ``<method>@alpha<a>``."""
        if self.results.empty or self.view.chosen.empty:
            return self.results.iloc[:0].assign(kind=ALPHA, row="")
        chosen = self.view.chosen[["dataset", "model", "method", "id_hp"]]
        grid = self.results[self.results["selection"] == "grid"].merge(chosen, on=["dataset", "model", "method"])
        grid = grid[grid["hp"] == grid["id_hp"]].drop(columns="id_hp")
        return grid.assign(kind=ALPHA, row=[alpha_row(m, a) for m, a in zip(grid["method"], grid["alpha"])])

    def _with_alpha_rows(self, view: ReportView) -> ReportView:
        if self.grid.empty or view.curves.empty:
            return view
        grid = self.grid
        c = view.curves
        stubs = c.assign(kind=ALPHA, row=[alpha_row(m, a) for m, a in zip(c["method"], c["alpha"])], label="", hp="")
        return dataclasses.replace(view, rows=pd.concat([view.rows, grid[list(view.rows.columns)]], ignore_index=True),
                                   summary=pd.concat([view.summary, stubs.drop(columns="alpha")], ignore_index=True))

    def interior_alpha(self, dataset: str, model: str, method: str, side: str) -> tuple[float | None, str]:
        """The interior alpha best on OOD val (ID val without one), ties to the smaller; and the split used."""
        grid = self.grid
        grid = grid[(grid["dataset"] == dataset) & (grid["model"] == model) & (grid["method"] == method)
                    & (grid["alpha"] > 0) & (grid["alpha"] < 1)]
        for split, q in ((self.cfg["ood_val_split"], headline(self.cfg, dataset, side)),
                         (self.cfg["val_split"], f"id_{self.cfg['selection_metric']}")):
            scores = per_seed_scores(grid, ["alpha", "seed"], self.cfg["val_split"], split)
            scores = scores[scores["quantity"] == q]
            if not scores.empty:
                means = scores.groupby("alpha")["value"].mean()
                return float(means[means == means.max()].index.min()), split
        return None, ""

    # -- operands
    def _label(self, dataset: str, model: str, row: str) -> str:
        s = self.view.summary
        hit = s[(s["dataset"] == dataset) & (s["model"] == model) & (s["row"] == row)]
        return str(hit["label"].iloc[0]) if not hit.empty and hit["label"].iloc[0] else row

    def _resolve(self, op: Operand, dataset: str, model: str, instance: str, alpha_star: float | None
                 ) -> tuple[str, str] | None:
        """(row, label) of an operand, or None when the experiment lacks it."""
        if op.role == ALPHA:
            a = alpha_star if op.alpha == INTERIOR else op.alpha
            if a is None:
                return None
            end = {0.0: " (pretrained end)", 1.0: " (fine-tuned end)"}.get(float(a), "")
            return alpha_row(instance, float(a)), f"{self._label(dataset, model, instance)}, alpha {a:g}{end}"
        method = LP if op.role == LP else self.roles[op.role]
        rows = self.view.table_rows(dataset, model, ("lp", "ft"))
        if method not in set(rows["row"]):
            return None
        return method, self._label(dataset, model, method)

    def _value(self, dataset: str, model: str, row: str, label: str, q: str) -> Value:
        stat = self.view.stat(dataset, model, row, q)
        if stat is None:
            return Value(label)
        low, high = self.view.interval(stat)
        return Value(label, 100 * stat.value(), 100 * low, 100 * high)

    def _check(self, test: Test, dataset: str, model: str, instance: str, alpha_star: float | None
               ) -> Check | list[str]:
        """The evaluated test, or what the experiment lacks for it."""
        q = headline(self.cfg, dataset, test.side)
        ops = [(op, self._resolve(op, dataset, model, instance, alpha_star)) for op in (test.a, test.b)]
        lacking = [self._need(op) for op, hit in ops if hit is None]
        lacking += [f"{names.quantity(q, unit=False)} of {hit[1]}" for _, hit in ops
                    if hit is not None and math.isnan(self.view.cell(dataset, model, hit[0], q).value)]
        if lacking:
            return lacking
        (_, a), (_, b) = ops
        va, vb = self._value(dataset, model, *a, q), self._value(dataset, model, *b, q)
        comp = self.view.compare(dataset, model, a[0], b[0], q)
        text = f"{a[1]} {relation_text(test.relation, test.tolerance)} {b[1]}: {names.quantity(q, unit=False)}"
        if comp is None:
            return Check(text, va, vb, relation=test.relation, tolerance=test.tolerance)
        return Check(text, va, vb, 100 * comp.delta, 100 * comp.low, 100 * comp.high, test.relation, test.tolerance,
                     verdict(test.relation, 100 * comp.low, 100 * comp.high, test.tolerance))

    def _need(self, op: Operand) -> str:
        if op.role == ALPHA:
            return "an interior alpha in wise_ft.alphas" if op.alpha == INTERIOR else \
                f"alpha {op.alpha:g} in wise_ft.alphas"
        return f"method {LP if op.role == LP else self.roles[op.role]!r}"

    def _ratio_check(self, dataset: str, model: str) -> Check | None:
        r = grad_ratio(self.norms, dataset, model)
        if math.isnan(r):
            return None
        return Check("embedding's gradient per parameter over the rest of the backbone's, at the start of fine-tuning",
                     Value("ratio", r), None, relation=">", verdict=HOLDS if r > 1 else FAILS)

    def evaluate_claim(self, claim: Claim, dataset: str, model: str, instance: str = "") -> ClaimResult:
        out = ClaimResult(claim, dataset, model, instance)
        alpha_star = None
        if claim.per_wise_ft:
            out.instance_label = self._label(dataset, model, instance)
            alpha_star, split = self.interior_alpha(dataset, model, instance, "ood")
            if alpha_star is None:
                out.missing.append("an interior alpha in wise_ft.alphas")
                return out
            out.note = f"alpha {alpha_star:g} is the interior alpha best on {names.split(split)}"
        for tests, checks in ((claim.tests, out.checks), (claim.condition_tests, out.condition_checks)):
            for t in tests:
                c = self._ratio_check(dataset, model) if t == GRAD_RATIO else self._check(
                    t, dataset, model, instance, alpha_star)
                if isinstance(c, Check):
                    checks.append(c)
                elif c is not None and tests is claim.tests:   # a condition that cannot be measured is left out
                    out.missing.extend(c)
        out.missing = list(dict.fromkeys(out.missing))
        return out

    def evaluate(self) -> list[ClaimResult]:
        out = []
        curves = self.view.curves
        for dataset, model in self.view.pairs():
            for claim in CLAIMS:
                if not claim.per_wise_ft:
                    out.append(self.evaluate_claim(claim, dataset, model))
                    continue
                part = curves[(curves["dataset"] == dataset) & (curves["model"] == model)] if not curves.empty \
                    else curves
                instances = [m for m in self.view.methods if not part.empty and m in set(part["method"])]
                if not instances:
                    out.append(ClaimResult(claim, dataset, model, missing=["WiSE-FT runs (wise_ft.methods)"]))
                for m in instances:
                    out.append(self.evaluate_claim(claim, dataset, model, m))
        return out


def alpha_row(method: str, alpha: float) -> str:
    return f"{method}@alpha{float(alpha):g}"


def relation_text(relation: str, tolerance: float = 0.0) -> str:
    text = RELATIONS[relation]
    if relation in (">=", "~=") and tolerance:
        return f"{text} (within {tolerance:g} point{'' if tolerance == 1 else 's'})"
    return text


def evaluate(view: ReportView, results: pd.DataFrame, grad_norms: pd.DataFrame | None = None) -> list[ClaimResult]:
    """Every claim of :data:`CLAIMS` on every dataset/model of the view."""
    return Evaluator(view, results, grad_norms).evaluate()


CSV_COLUMNS = ["claim", "paper", "dataset", "model", "instance", "part", "check", "a", "a_mean", "a_low", "a_high",
               "b", "b_mean", "b_low", "b_high", "relation", "tolerance", "delta", "delta_low", "delta_high",
               "verdict", "claim_verdict", "condition_verdict"]


def claims_table(results: list[ClaimResult]) -> pd.DataFrame:
    """One row per check (``part``: claim or condition), values in percent, with both overall verdicts."""
    rows = []
    for r in results:
        base = {"claim": r.claim.id, "paper": r.claim.paper, "dataset": r.dataset, "model": r.model,
                "instance": r.instance, "claim_verdict": r.verdict, "condition_verdict": r.condition_verdict}
        if r.missing:   # what the claim needs; the parts that could be computed would only mislead
            rows.append({**base, "part": "claim", "check": "needs " + ", ".join(r.missing), "verdict": NOT_EVALUATED})
            continue
        for part, checks in (("claim", r.checks), ("condition", r.condition_checks)):
            for c in checks:
                b = c.b or Value("")
                rows.append({**base, "part": part, "check": c.text, "a": c.a.label, "a_mean": c.a.mean,
                             "a_low": c.a.low, "a_high": c.a.high, "b": b.label, "b_mean": b.mean, "b_low": b.low,
                             "b_high": b.high, "relation": c.relation, "tolerance": c.tolerance, "delta": c.delta,
                             "delta_low": c.low, "delta_high": c.high, "verdict": c.verdict})
    return pd.DataFrame(rows, columns=CSV_COLUMNS)
