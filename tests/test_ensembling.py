"""WiSE-FT weight interpolation and its stage."""
import pandas as pd
import pytest
import torch

from pipeline.ensembling.interpolate import interpolate, pretrained_endpoint, select_alpha


def states():
    g = torch.Generator().manual_seed(0)
    t0 = {"w": torch.randn(3, 4, generator=g), "bn.n": torch.tensor(5), "head.weight": torch.randn(2, 4, generator=g),
          "head.bias": torch.zeros(2)}
    t1 = {"w": torch.randn(3, 4, generator=g), "bn.n": torch.tensor(9), "head.weight": torch.randn(2, 4, generator=g),
          "head.bias": torch.ones(2)}
    return t0, t1


def test_endpoints_are_exact():
    t0, t1 = states()
    at0, at1 = interpolate(t0, t1, 0.0), interpolate(t0, t1, 1.0)
    assert torch.equal(at0["w"], t0["w"]) and torch.equal(at1["w"], t1["w"])
    assert torch.equal(at0["bn.n"], t1["bn.n"])  # integer buffers are never averaged


def test_midpoint_and_kept_keys():
    t0, t1 = states()
    mid = interpolate(t0, t1, 0.3, keep_from_1=frozenset({"head.weight", "head.bias"}))
    assert torch.allclose(mid["w"], 0.7 * t0["w"] + 0.3 * t1["w"])
    assert torch.equal(mid["head.weight"], t1["head.weight"])


def test_key_mismatch_raises():
    t0, t1 = states()
    del t0["w"]
    with pytest.raises(KeyError, match="differ"):
        interpolate(t0, t1, 0.5)


def test_pretrained_endpoint_heads():
    pre = {"w": torch.zeros(3, 4), "head.weight": torch.zeros(1000, 4), "head.bias": torch.zeros(1000)}
    _, ft = states()
    keys = ("head.weight", "head.bias")
    # fresh head: interpolate the backbone only, keep the fine-tuned head (WF issue #8)
    theta0, keep = pretrained_endpoint(pre, ft, keys, None)
    assert keep == frozenset(keys) and torch.equal(theta0["head.weight"], ft["head.weight"])
    assert torch.equal(theta0["bn.n"], ft["bn.n"])
    # LP-FT: both endpoints share the LP head, which is interpolated too
    lp = {"weight": torch.full((2, 4), 7.0), "bias": torch.full((2,), 7.0)}
    theta0, keep = pretrained_endpoint(pre, ft, keys, lp)
    assert keep == frozenset() and torch.equal(theta0["head.weight"], lp["weight"])


def test_select_uses_named_split_and_breaks_ties_to_smaller_alpha():
    rows = []
    for alpha, idv, oodv in [(0.0, 0.5, 0.9), (0.5, 0.8, 0.7), (1.0, 0.8, 0.2)]:
        rows += [{"alpha": alpha, "split": "id_val", "domain": "all", "metric": "acc", "value": idv},
                 {"alpha": alpha, "split": "ood_val", "domain": "all", "metric": "acc", "value": oodv},
                 {"alpha": alpha, "split": "id_test", "domain": "all", "metric": "acc", "value": 1 - alpha}]
    curve = pd.DataFrame(rows)
    assert select_alpha(curve, "id_val") == 0.5
    assert select_alpha(curve, "ood_val") == 0.0
    with pytest.raises(ValueError):
        select_alpha(curve, "nope")


def soup_states(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [{"w": torch.randn(3, 4, generator=g), "bn.n": torch.tensor(i)} for i in range(n)]


def test_soups_of_one_model_reproduce_it_exactly():
    from pipeline.ensembling.soup import greedy_soup, uniform_soup

    (only,) = soup_states(1)
    assert torch.equal(uniform_soup([only])["w"], only["w"])
    soup, kept, score = greedy_soup(iter([only]), 0.7, lambda s: pytest.fail("nothing to score"))
    assert torch.equal(soup["w"], only["w"]) and kept == [True] and score == 0.7


def test_uniform_soup_is_the_mean_and_keeps_integer_buffers():
    from pipeline.ensembling.soup import uniform_soup

    states = soup_states(3)
    soup = uniform_soup(iter(states))
    assert torch.allclose(soup["w"], sum(s["w"] for s in states) / 3, atol=1e-7)
    assert soup["w"].dtype == torch.float32 and torch.equal(soup["bn.n"], states[0]["bn.n"])


def test_greedy_soup_adds_an_ingredient_only_if_id_val_strictly_improves():
    from pipeline.ensembling.soup import greedy_soup

    states = soup_states(4)
    # The candidate's "accuracy" is a function of the averaged weights, so the test knows each outcome.
    target = (states[0]["w"] + states[2]["w"]) / 2
    calls = []

    def score(s):
        calls.append(s)
        return 0.9 if torch.allclose(s["w"], target, atol=1e-6) else 0.5

    soup, kept, best = greedy_soup(iter(states), 0.5, score)
    # ingredient 1 ties (0.5 is not > 0.5): rejected; 2 improves; 3 does not.
    assert kept == [True, False, True, False] and best == 0.9 and len(calls) == 3
    assert torch.allclose(soup["w"], target, atol=1e-6)
