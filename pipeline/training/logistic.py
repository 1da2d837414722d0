"""Multinomial L2 logistic regression on cached features: torch L-BFGS and a warm-started C sweep.

The recipe follows the linear probe of Kumar et al. (methods.md section 1.1):

* features are normalised with one scalar mean and std over every entry of the
  train features, so that C means the same thing across datasets;
* the objective is scikit-learn's ``1/2 ||W||^2 + C * sum_i CE(W x_i + b, y_i)``
  with an unpenalised bias;
* C runs over a log grid in increasing order, each fit starting from the last
  solutions, and is chosen on ID-val accuracy only (never test);
* the saved head is un-normalised, so it applies to the raw features.

The solver minimises that objective divided by ``C * n``, i.e. ``mean CE +
||W||^2 / (2 C n)``: the same minimiser, O(1) gradients, and the function
scikit-learn hands to L-BFGS, so its ``tol`` (max |gradient|) means about the
same here. Two changes that leave every minimiser as it is cut the L-BFGS
iterations about threefold against scikit-learn's on the same grid, at about
the same or a lower objective per C (``bench/linear_probe.py`` prints both):

* the sweep fits ``W (x - m) + c`` with ``m`` the per-dimension train mean and
  ``c = b + W m``. The penalty only touches W, so this is a change of variables
  with the same optimum, but the bias no longer fights the large mean direction
  of the features (post-activation features are far from centred);
* each warm start extrapolates the path linearly in log C from the last two
  solutions instead of restarting from the last one.

A class absent from train gets a large negative bias (its optimum is -inf), so
the head never predicts it; the head keeps all ``num_classes`` rows.

Two classes (``binary_C``): scikit-learn fits one vector ``u`` with ``1/2 ||u||^2 + C sum_i
log(1 + exp(-y_i u.x_i))``, which transfer_learning turns into the rows ``[-u/2, u/2]``
(AnanyaKumar/transfer_learning@13c3e2b:unlabeled_extrapolation/baseline_train.py:229-240). The two-row
softmax's cross-entropy depends on ``u = w_2 - w_1`` only and its penalty is least at ``w_1 = -w_2``, where
``1/2 ||W||^2 = 1/4 ||u||^2``: its objective at C is scikit-learn's at 2C, halved. ``binary_C="sklearn"``
therefore fits the two-row softmax at C/2, so C (reported in the sweep and the head's metadata) means what
it means in scikit-learn and transfer_learning; ``"multinomial"`` fits at C itself (2C on scikit-learn's scale).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SweepRow:
    """One C of the sweep."""

    C: float
    train_acc: float
    val_acc: float
    iterations: int
    seconds: float
    objective: float  # 1/2 ||W||^2 + C * sum CE at the solution (float64), to compare solvers


@dataclass(frozen=True)
class SweepResult:
    """Every C's row, the selected index, and the selected head for raw features."""

    rows: list[SweepRow]
    selected: int
    weight: torch.Tensor  # [K, D] float32, applies to raw (un-normalised) features
    bias: torch.Tensor  # [K] float32
    mu: float
    sigma: float

    @property
    def C(self) -> float:
        return self.rows[self.selected].C


def c_grid(C_min: float, C_max: float, num_C: int) -> np.ndarray:
    """The increasing log grid of C values of params.yaml ``linear_probe``."""
    return np.logspace(np.log10(C_min), np.log10(C_max), int(num_C))


def scalar_stats(x: torch.Tensor) -> tuple[float, float]:
    """One mean and (population) std over all entries, accumulated in float64."""
    x64 = x.double()
    mu, sigma = float(x64.mean()), float(x64.std(correction=0))
    return mu, (sigma if sigma > 0 else 1.0)  # constant features: leave the scale alone


def normalise(x: torch.Tensor, mu: float, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (x.to(dtype) - mu) / sigma


def unnormalise(weight: torch.Tensor, bias: torch.Tensor, mu: float,
                sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Head for raw features: W' = W / sigma, b' = b - (mu / sigma) * W 1.

    ``W (x - mu 1) / sigma + b == W' x + b'``, so the logits do not change.
    """
    w64, b64 = weight.double(), bias.double()
    return (w64 / sigma).float(), (b64 - (mu / sigma) * w64.sum(1)).float()


class LogisticProblem:
    """Train design and labels, laid out once for every C of a sweep.

    A ones column folds the bias into the matmuls, and one flat parameter
    ``theta = [W | b]`` keeps L-BFGS's per-iteration bookkeeping to one tensor.
    Logits are computed class-major ([K, n]): both matmuls then read a
    contiguous operand (measured ~25% faster per evaluation than [n, K] on one thread).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int):
        n = x.shape[0]
        self.n, self.num_classes = n, num_classes
        self.xa = torch.cat([x, x.new_ones(n, 1)], 1)  # [n, D + 1]
        self.xa_t = self.xa.T.contiguous()  # [D + 1, n]
        self.onehot_t = torch.nn.functional.one_hot(y.long(), num_classes).T.to(x.dtype).contiguous()  # [K, n]

    def fit(self, C: float, max_iter: int = 100, tol: float = 1e-4, init: torch.Tensor | None = None,
            history_size: int = 10) -> tuple[torch.Tensor, int]:
        """Minimise ``mean CE + ||W||^2 / (2 C n)`` over theta with L-BFGS (strong Wolfe).

        Stops after ``max_iter`` iterations or once max |grad| <= ``tol``
        (scikit-learn's ``gtol``); ``history_size`` 10 is scipy's ``maxcor``.
        Returns theta [K, D + 1] (bias last) and the iteration count.
        """
        xa, xa_t, onehot_t, n = self.xa, self.xa_t, self.onehot_t, self.n
        shape = (self.num_classes, xa.shape[1])
        theta = (xa.new_zeros(shape) if init is None else init.to(xa.dtype).clone()).requires_grad_(True)
        reg = 1.0 / (C * n)

        def closure() -> torch.Tensor:
            # Loss and gradient in closed form (softmax - onehot), cheaper than autograd here.
            with torch.no_grad():
                logp = torch.log_softmax(theta @ xa_t, 0)  # [K, n]
                w = theta[:, :-1]
                loss = -(logp * onehot_t).sum() / n + 0.5 * reg * (w * w).sum()
                grad = torch.addmm(theta, logp.exp_() - onehot_t, xa, beta=reg, alpha=1.0 / n)
                grad[:, -1] -= reg * theta[:, -1]  # the bias is not penalised (sklearn's convention)
                theta.grad = grad
            return loss

        opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=tol,
                                history_size=history_size, line_search_fn="strong_wolfe")
        opt.step(closure)
        return theta.detach(), int(opt.state[theta].get("n_iter", 0))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, C: float, num_classes: int, max_iter: int = 100,
                 tol: float = 1e-4, init: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """One C on the [n, D] design ``x`` (its dtype is the working dtype): theta = [W | b] and iterations."""
    return LogisticProblem(x, y, num_classes).fit(C, max_iter, tol, init)


def logits(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``theta = [W | b]`` on features ``x`` in the same coordinates."""
    return torch.addmm(theta[:, -1], x.to(theta.dtype), theta[:, :-1].T)


def objective(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, C: float) -> float:
    """scikit-learn's objective ``1/2 ||W||^2 + C * sum_i CE``, summed in float64."""
    return _objective(torch.addmm(bias.to(x.dtype), x, weight.to(x.dtype).T), weight, y, C)


def _objective(z: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, C: float) -> float:
    w = weight.double()
    return float(0.5 * (w * w).sum() + C * torch.nn.functional.cross_entropy(z.double(), y.long(), reduction="sum"))


def _accuracy(z: torch.Tensor, y: torch.Tensor) -> float:
    return float((z.argmax(1) == y).double().mean())


def _warm_start(path: list[tuple[float, torch.Tensor]], C: float) -> torch.Tensor | None:
    """Next start: the last solution moved along the last path step, scaled to the log-C step."""
    if len(path) < 2:
        return path[-1][1] if path else None
    (c0, t0), (c1, t1) = path[-2:]
    return t1 + (t1 - t0) * (math.log(C / c1) / math.log(c1 / c0))


def binary_factor(num_classes: int, binary_C: str) -> float:
    """C of the two-row softmax fit per C reported: 1/2 for two classes on scikit-learn's scale, else 1."""
    if binary_C not in ("sklearn", "multinomial"):
        raise ValueError(f"binary_C must be sklearn or multinomial, got {binary_C!r}")
    return 0.5 if num_classes == 2 and binary_C == "sklearn" else 1.0


def sweep(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
          num_classes: int, Cs, max_iter: int = 100, tol: float = 1e-4,
          dtype: torch.dtype = torch.float32, binary_C: str = "sklearn") -> SweepResult:
    """Fit every C of ``Cs`` (sorted increasing, distinct), warm-started; select on val accuracy.

    Raw features in, un-normalised head out. Ties in val accuracy go to the
    smaller C (stronger regularisation). Test data never enters. Two classes: C on
    ``binary_C``'s scale (module docstring); rows report that C and that scale's objective.
    """
    factor = binary_factor(num_classes, binary_C)
    Cs = np.unique(np.asarray(Cs, dtype=np.float64))  # sorted, no zero-length log step
    mu, sigma = scalar_stats(x_train)
    xt, xv = normalise(x_train, mu, sigma, dtype), normalise(x_val, mu, sigma, dtype)
    m = xt.mean(0)
    xt, xv = xt - m, xv - m  # fit in centred coordinates (module docstring)
    yt, yv = y_train.long(), y_val.long()
    problem = LogisticProblem(xt, yt, num_classes)
    path: list[tuple[float, torch.Tensor]] = []
    rows: list[SweepRow] = []
    best, best_theta = 0, None
    for C in map(float, Cs):
        t0 = time.perf_counter()
        fit_C = C * factor
        theta, iters = problem.fit(fit_C, max_iter, tol, init=_warm_start(path, fit_C))
        path = [*path[-1:], (fit_C, theta)]
        zt, zv = logits(theta, xt), logits(theta, xv)
        rows.append(SweepRow(C, _accuracy(zt, yt), _accuracy(zv, yv), iters, time.perf_counter() - t0,
                             _objective(zt, theta[:, :-1], yt, fit_C) / factor))
        if best_theta is None or rows[-1].val_acc > rows[best].val_acc:  # strict: smallest C wins ties
            best, best_theta = len(rows) - 1, theta
    assert best_theta is not None, "empty C grid"
    w = best_theta[:, :-1].double()
    b = best_theta[:, -1].double() - w @ m.double()  # back from centred coordinates: b = c - W m
    weight, bias = unnormalise(w, b, mu, sigma)
    return SweepResult(rows, best, weight, bias, mu, sigma)
