"""What a run builds from a scenario: caching, seeding and identical evaluation tasks."""

from __future__ import annotations

import json

import pytest
import torch

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
