"""What a run builds from a scenario: caching, seeding and identical evaluation tasks."""

from __future__ import annotations

import json

import pytest
import torch

from fedmeta.errors import FedmetaError
from fedmeta.evaluate import evaluate_tasks
from fedmeta.experiment import build_experiment, data_loads, experiment_from_json
from fedmeta.scenario import scenario_from_dict


def test_data_is_loaded_once_per_process(tiny_raw):
    tiny_raw["data"]["num-classes"] = 41  # a source no other test has built
    sc = scenario_from_dict(tiny_raw)
    before = data_loads()
    a = build_experiment(sc)
    b = experiment_from_json(sc.to_json())
    for pid in range(6):
        a.eval_tasks(pid)
    assert a.source is b.source
    assert data_loads() == before + 1


def test_eval_tasks_identical_across_learners_and_strategies(tiny_raw):
    base = scenario_from_dict(tiny_raw)
    other = dict(tiny_raw, learner={"name": "reptile"}, strategy={"name": "fedadam"})
    a, b = build_experiment(base), build_experiment(scenario_from_dict(other))
    for pid in (4, 5):
        for ta, tb in zip(a.eval_tasks(pid), b.eval_tasks(pid), strict=True):
            assert torch.equal(ta.support_x, tb.support_x) and torch.equal(ta.query_y, tb.query_y)
    assert json.loads(base.to_json())["seed"] == 3


def test_seeded_initialisation_and_training_tasks(tiny_raw):
    sc = scenario_from_dict(tiny_raw)
    a, b = build_experiment(sc), build_experiment(sc)
    pa, pb = a.initial_params(), b.initial_params()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    ta, tb = a.train_sampler(1, 7)(2), b.train_sampler(1, 7)(2)
    assert all(torch.equal(x.support_x, y.support_x) for x, y in zip(ta, tb, strict=True))
    tc = a.train_sampler(1, 8)(2)
    assert not all(torch.equal(x.support_x, y.support_x) for x, y in zip(ta, tc, strict=True))
    other = build_experiment(scenario_from_dict(dict(tiny_raw, seed=4))).initial_params()
    assert not all(torch.equal(pa[k], other[k]) for k in pa)


def test_evaluation_reports_pre_and_post_per_task(tiny_raw):
    exp = build_experiment(scenario_from_dict(tiny_raw))
    tasks = exp.eval_tasks(5)
    out = evaluate_tasks(exp.learner, exp.initial_params(), tasks, exp.source.kind)
    assert set(out) == {"query-acc-pre", "query-acc-post", "query-loss-pre", "query-loss-post"}
    assert all(len(v) == len(tasks) == 3 for v in out.values())
    # 3-way with 2 queries per class: an accuracy counts correct answers out of 6
    assert all(a * 6 == pytest.approx(round(a * 6)) for a in out["query-acc-post"])
    still = evaluate_tasks(exp.learner, exp.initial_params(), tasks, exp.source.kind, steps=0)
    assert still["query-acc-post"] == still["query-acc-pre"] == out["query-acc-pre"]
    assert still["query-loss-post"] == still["query-loss-pre"] == out["query-loss-pre"]


def test_train_way_widens_training_episodes_only(tiny_raw):
    """``task.train-way`` (ProtoNet's wider training episodes, Snell et al. 2017): training
    clients sample train-way tasks; held-out evaluation keeps task.n-way."""
    tiny_raw["learner"] = {"name": "protonet", "local-steps": 1, "tasks-per-step": 2}
    tiny_raw["task"]["train-way"] = 5
    exp = build_experiment(scenario_from_dict(tiny_raw), check_all=True)
    tasks = exp.train_sampler(0, 1)(2)
    assert [len(t.support_y.unique()) for t in tasks] == [5, 5]
    assert all(len(t.support_y.unique()) == 3 for t in exp.eval_tasks(4))
    params, metrics = exp.learner.local_update(exp.initial_params(), exp.train_sampler(0, 1))
    assert metrics["train-loss"] > 0 and params.keys() == exp.initial_params().keys()


def test_train_way_refused_for_a_fixed_head_and_for_small_clients(tiny_raw):
    tiny_raw["task"]["train-way"] = 5
    with pytest.raises(FedmetaError, match=r"task\.train-way = 5 but learner\.name = 'fomaml'"):
        scenario_from_dict(tiny_raw)
    tiny_raw["learner"] = {"name": "protonet"}
    tiny_raw["task"]["train-way"] = 30
    with pytest.raises(FedmetaError, match=r"but task\.train-way = 30; lower task\.train-way"):
        build_experiment(scenario_from_dict(tiny_raw), check_all=True)
