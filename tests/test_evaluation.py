"""Accuracy rows and the evaluate stage."""
import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.metrics import COLUMNS, accuracy_rows, tidy


def test_accuracy_rows_per_domain():
    rows = accuracy_rows(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), np.array(["a", "a", "b", "b"]), "ood")
    got = {(r["domain"]): (r["value"], r["n"]) for r in rows}
    assert got == {"all": (0.75, 4), "a": (1.0, 2), "b": (0.5, 2)}
    with pytest.raises(ValueError):
        accuracy_rows(np.zeros(3), np.zeros(4), np.array(["a"] * 4), "x")


def test_tidy_columns():
    df = tidy([{"split": "s", "domain": "all", "metric": "acc", "value": 1.0, "n": 1}], dataset="d", seed=0,
              config_hash="abc")
    assert list(df.columns) == COLUMNS and df.loc[0, "selection"] == ""
    assert pd.isna(df.loc[0, "alpha"])
