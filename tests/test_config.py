"""Scenario validation: unknown keys, wrong types, impossible values, overrides, round trip."""

from __future__ import annotations

import pytest
import tomli_w
import tomllib

from fedmeta.errors import FedmetaError
from fedmeta.scenario import apply_overrides, load_scenario, scenario_from_dict


def test_defaults_fill_in(tiny_raw):
    sc = scenario_from_dict(tiny_raw)
    assert sc.task.n_way == 3 and sc.learner.options.inner_lr == 0.4
    assert sc.strategy.name == "fedavg" and sc.backend.device == "auto"


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"learner": {"name": "maml", "inner-lrr": 0.1}}, "'learner.inner-lrr'"),
        ({"trian": {"rounds": 3}}, "'trian'"),
        ({"task": {"n-way": "five"}}, "'task.n-way'"),
        ({"train": {"rounds": -1}}, "'train.rounds'"),
        ({"learner": {"name": "mamll"}}, "learner.name = 'mamll'"),
        ({"strategy": {"name": "fedavgm", "momentum": 1.5}}, "'strategy.momentum'"),
        ({"data": {"name": "synthetic", "root": 3}}, "'data.root'"),
        ({"seed": -1}, "'seed'"),
    ],
)
def test_bad_scenarios_name_the_key(tiny_raw, patch, needle):
    raw = {**tiny_raw, **patch}
    with pytest.raises(FedmetaError) as info:
        scenario_from_dict(raw)
    msg = str(info.value)
    assert needle in msg, msg
    assert "\n" not in msg


def test_misspelling_suggests_the_right_key(tiny_raw):
    tiny_raw["learner"]["inner-lrr"] = 0.1
    with pytest.raises(FedmetaError, match="did you mean 'inner-lr'"):
        scenario_from_dict(tiny_raw)


def test_overrides_parse_toml_values(tiny_raw):
    raw = apply_overrides(
        tiny_raw,
        [
            "train.rounds=7",
            "learner.inner-lr=0.05",
            "model.norm=group",
            "evaluation.at-start=false",
        ],
    )
    sc = scenario_from_dict(raw)
    assert sc.train.rounds == 7 and sc.learner.options.inner_lr == 0.05
    assert sc.model.options.norm == "group" and sc.evaluation.at_start is False
    assert tiny_raw["train"]["rounds"] == 2  # the input is not mutated


def test_bad_override_is_user_error(tiny_raw):
    with pytest.raises(FedmetaError, match="key=value"):
        apply_overrides(tiny_raw, ["train.rounds"])


def test_resolved_scenario_round_trips(tmp_path, tiny_raw):
    sc = scenario_from_dict(tiny_raw)
    path = tmp_path / "resolved.toml"
    path.write_text(tomli_w.dumps(sc.to_toml()))
    again = load_scenario(path)
    assert again == sc
    assert tomllib.loads(path.read_text())["learner"]["eval-inner-steps"] == 3


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(FedmetaError, match="not found"):
        load_scenario(tmp_path / "nope.toml")


def test_setting_a_named_table_name_keeps_only_options_the_new_entry_takes(tiny_raw):
    from fedmeta.scenario import apply_overrides

    tiny_raw["partition"] = {"name": "label-split", "classes-per-client": 2, "divide": True}
    raw = apply_overrides(tiny_raw, ["partition.name=dirichlet", "partition.alpha=0.1"])
    assert raw["partition"] == {"name": "dirichlet", "alpha": 0.1}
    raw = apply_overrides(tiny_raw, ["learner.name=reptile"])
    assert raw["learner"]["local-steps"] == 2 and raw["learner"]["name"] == "reptile"
    assert scenario_from_dict(raw).learner.name == "reptile"
