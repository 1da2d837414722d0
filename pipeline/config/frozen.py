"""A read-only params tree, on which per-config computations are remembered.

Planning a sweep asks the same questions of the config once per job (a run's grid point, its resolved
settings, a stage's job list), and each answer costs time in the size of the grid: asked per job, that
is quadratic in the number of runs. The runners plan on a config frozen after validation
(:func:`freeze`), so an answer can be kept on the config object itself and computed once
(:func:`remember`); a mutable config (tests, tools that edit one) is never memoised.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class Frozen(dict):
    """A dict that refuses changes; nested mappings of a frozen config are Frozen too."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("this params tree is frozen (planned on); edit a copy: dict(cfg) or load it again")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only  # type: ignore
    __hash__ = object.__hash__   # identity: two frozen configs are different plans

    def __reduce__(self):        # copy/deepcopy/pickle rebuild it through dict's constructor
        return (Frozen, (dict(self),))


def freeze(value: Any) -> Any:
    """``value`` with every mapping made :class:`Frozen` (lists stay lists; nothing edits them)."""
    if isinstance(value, dict):
        return Frozen({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return [freeze(v) for v in value]
    return value


def remember(node: Any, key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, kept on ``node`` under ``key`` when ``node`` is frozen (else computed every time)."""
    if not isinstance(node, Frozen):
        return compute()
    cache = node.__dict__.setdefault("_remembered", {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]
