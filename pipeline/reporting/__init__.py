"""Reporting: results aggregated over seeds and grid points, intervals, the papers' tables and figures.

Depends on :mod:`pipeline.evaluation` (tidy metrics, saved predictions) and :mod:`pipeline.methods`
(display names). ``aggregate`` chooses and summarises the table rows; ``store`` and ``bootstrap``
give their 95% intervals and paired comparisons; ``robustness`` the effective-robustness fit;
``reference`` reads the published numbers; ``view`` puts these together for the table ``layouts``
(a registry: one module and one template each), which ``cells`` and ``tables`` render as LaTeX and
HTML. Used by the ``report``, ``costs`` and ``paper`` stages.
"""
