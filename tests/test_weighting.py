"""Client weighting (``strategy.weight``): uniform by default, by examples on request."""

from __future__ import annotations

import pytest

from fedmeta.protocol import NUM_EXAMPLES, UNIT_WEIGHT
from fedmeta.scenario import scenario_from_dict
from fedmeta.strategies import STRATEGIES
from server.strategies import build_strategy, reply_weight_key


@pytest.mark.parametrize(
    ("strategy", "key"),
    [
        ({"name": "fedavg"}, UNIT_WEIGHT),
        ({"name": "fedavg", "weight": "uniform"}, UNIT_WEIGHT),
        ({"name": "fedavg", "weight": "examples"}, NUM_EXAMPLES),
        ({"name": "fedadam", "weight": "examples"}, NUM_EXAMPLES),
        ({"name": "fedmedian"}, UNIT_WEIGHT),  # not a mean: nothing to weight
    ],
)
def test_replies_are_weighted_as_the_scenario_says(tiny_raw, strategy, key):
    tiny_raw["strategy"] = strategy
    sc = scenario_from_dict(tiny_raw)
    assert reply_weight_key(sc) == key
    built = build_strategy(sc.strategy.name, sc.strategy.options, key)  # Flower accepts it
    assert built.weighted_by_key == key


def test_weight_is_not_passed_to_flower_and_robust_strategies_do_not_take_it(tiny_raw):
    spec = STRATEGIES.get("fedavgm")
    kwargs = spec.kwargs(spec.Options(weight="examples"))
    assert "weight" not in kwargs and kwargs["server_momentum"] == 0.9
    tiny_raw["strategy"] = {"name": "krum", "weight": "examples"}
    with pytest.raises(Exception, match="weight"):
        scenario_from_dict(tiny_raw)
