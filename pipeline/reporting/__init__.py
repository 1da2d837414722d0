"""Reporting: results aggregated over seeds and grid points, Jinja LaTeX tables, figures, the paper.

Depends on :mod:`pipeline.evaluation` (tidy metrics) and :mod:`pipeline.methods` (display
names). Stages: ``report`` and ``paper``.
"""
