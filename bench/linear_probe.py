"""Time the torch L-BFGS linear-probe sweep against scikit-learn's on the same features and C grid.

    python bench/linear_probe.py [--features PATH] [--params params.yaml] [--repeats N] [--threads N]

Both solvers get the same scalar-normalised train features (same dtype), the
same increasing C grid and ``max_iter`` from params.yaml, warm starts along the
grid, and the same thread count. Each timed sweep includes the per-C train/val
accuracies that select C. scikit-learn otherwise runs with its defaults:
``LogisticRegression(solver="lbfgs", warm_start=True, max_iter=...)`` with tol
1e-4, which is also the torch solver's gradient tolerance on the same
mean-scaled objective. Runs alternate between the two solvers so that load on
the machine affects both alike, and the table gives the median and best of N.

Both solvers also run with 1 thread. With two threads, scikit-learn's lbfgs
spends most of its time in thread hand-offs between numpy's and scipy's OpenBLAS
pools (it was about 7x slower than single-threaded on a 2-core box), so the
headline ratio compares each solver at its faster thread count. The objective
line checks that the speed is not bought by stopping early.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline.training.logistic import SweepRow, c_grid, normalise, objective, scalar_stats, sweep

DEFAULT_FEATURES = "results/digits/lite0/features.safetensors"


def sklearn_sweep(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, Cs: np.ndarray,
                  max_iter: int) -> tuple[list[SweepRow], int]:
    """scikit-learn's warm-started sweep over ``Cs``; rows and the selected index (first best val acc)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(solver="lbfgs", warm_start=True, max_iter=max_iter)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rows: list[SweepRow] = []
    for C in Cs:
        t0 = time.perf_counter()
        clf.set_params(C=float(C))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # hitting max_iter is in the iteration count
            clf.fit(x, y)
        rows.append(SweepRow(float(C), clf.score(x, y), clf.score(xv, yv), int(clf.n_iter_[0]),
                             time.perf_counter() - t0,
                             objective(torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_), xt, yt, C)))
    return rows, int(np.argmax([r.val_acc for r in rows]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", default=DEFAULT_FEATURES)
    ap.add_argument("--params", default="params.yaml", help="C grid and max_iter from linear_probe")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch and BLAS/OpenMP threads for both; both also run with 1 thread")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="for both solvers")
    args = ap.parse_args(argv)
    if not Path(args.features).exists():
        print(f"{args.features}: not found. Build it with `make demo` or "
              f"`snakemake --cores 2 {DEFAULT_FEATURES}`.", file=sys.stderr)
        return 1

    from threadpoolctl import threadpool_limits

    from pipeline.config import load_params
    from pipeline.models.features import load_features

    p = load_params(args.params)["linear_probe"]
    Cs, max_iter = c_grid(p["C_min"], p["C_max"], p["num_C"]), int(p.get("max_iter", 100))
    splits, meta = load_features(args.features)
    tr, va = splits[meta["train_split"]], splits[meta["val_split"]]
    dtype = getattr(torch, args.dtype)
    mu, sigma = scalar_stats(tr["features"])
    x_np, xv_np = (normalise(t["features"], mu, sigma, dtype).numpy() for t in (tr, va))
    y_np, yv_np = tr["labels"].numpy(), va["labels"].numpy()

    load0 = os.getloadavg()[0]  # other work on the machine slows multi-threaded runs most
    # (solver, threads) -> wall times, and the rows/selection of the last run.
    times: dict[tuple[str, int], list[float]] = {}
    result: dict[tuple[str, int], tuple[list[SweepRow], int]] = {}
    for threads in sorted({args.threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads):
            for rep in range(args.repeats + 1):  # round 0 warms both up (lazy init, caches); not timed
                t0 = time.perf_counter()
                res = sweep(tr["features"], tr["labels"], va["features"], va["labels"], meta["num_classes"],
                            Cs, max_iter, dtype=dtype)
                t1 = time.perf_counter()
                result["sklearn", threads] = sklearn_sweep(x_np, y_np, xv_np, yv_np, Cs, max_iter)
                t2 = time.perf_counter()
                result["torch", threads] = (res.rows, res.selected)
                if rep:
                    times.setdefault(("torch", threads), []).append(t1 - t0)
                    times.setdefault(("sklearn", threads), []).append(t2 - t1)

    n, d = x_np.shape
    print(f"{args.features}: train {n} x {d}, {meta['num_classes']} classes, {meta['val_split']} "
          f"{len(yv_np)}; {len(Cs)} C in [{Cs[0]:.3g}, {Cs[-1]:.3g}], max_iter {max_iter}, {args.dtype}, "
          f"{args.repeats} repeats; load average {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'solver':<16}{'threads':>8}{'median s':>10}{'best s':>8}{'iters':>7}{'C':>8}{'val acc %':>10}")
    for (name, threads), t in times.items():
        rows, sel = result[name, threads]
        label = "torch L-BFGS" if name == "torch" else "sklearn lbfgs"
        print(f"{label:<16}{threads:>8d}{statistics.median(t):>10.3f}{min(t):>8.3f}"
              f"{sum(r.iterations for r in rows):>7d}{rows[sel].C:>8.3g}{100 * rows[sel].val_acc:>10.2f}")
    med = {k: statistics.median(t) for k, t in times.items()}
    best = {s: min(v for (name, _), v in med.items() if name == s) for s in ("torch", "sklearn")}
    (t_rows, t_sel), (s_rows, s_sel) = result["torch", args.threads], result["sklearn", args.threads]
    print(f"speed ratio sklearn/torch at {args.threads} threads: "
          f"{med['sklearn', args.threads] / med['torch', args.threads]:.1f}x; "
          f"each at its faster thread count: {best['sklearn'] / best['torch']:.1f}x")
    print(f"selected {meta['val_split']} accuracy at {args.threads} threads, torch - sklearn: "
          f"{100 * (t_rows[t_sel].val_acc - s_rows[s_sel].val_acc):+.2f} points "
          f"(largest per-C difference {100 * max(abs(a.val_acc - b.val_acc) for a, b in zip(t_rows, s_rows)):.2f})")
    gaps = [(a.objective - b.objective) / b.objective for a, b in zip(t_rows, s_rows)]
    print(f"objective 1/2||W||^2 + C*sum CE, torch vs sklearn: lower at {sum(g < 0 for g in gaps)} of "
          f"{len(gaps)} C; relative difference from {100 * min(gaps):+.3f}% to {100 * max(gaps):+.3f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
