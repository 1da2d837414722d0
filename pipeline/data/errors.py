"""The error of prepared data that cannot be used as it is (cheap to import: the CLI catches it)."""
from __future__ import annotations


class PreparedDataError(RuntimeError):
    """A prepared dataset is outdated, incomplete or altered after preparation.

    ``str(err)`` is one line naming the file, what is wrong and what to do (re-prepare it).
    """
