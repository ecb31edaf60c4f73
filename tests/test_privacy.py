"""Privacy: accounting against opacus, DP wrappers, DP-SGD, SecAgg+, the audit, bad settings."""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedmeta.errors import FedmetaError
from fedmeta.experiment import build_experiment
from fedmeta.learners.base import LocalContext
from fedmeta.privacy.accounting import epsilon, noise_for_epsilon
from fedmeta.privacy.audit import roc_auc, tpr_at_fpr
from fedmeta.privacy.dpsgd import clipped_noisy_mean
from fedmeta.results import RunDir
from fedmeta.scenario import scenario_from_dict
from fedmeta.stats import auc_ci95
from runner.cli import run_cli

pytestmark = pytest.mark.usefixtures("shared_ray")  # simulations attach to one Ray head


class _Quiet:
    def start(self, *a): ...
    def update(self, *a): ...
    def finish(self): ...


def _simulate(raw: dict) -> tuple[dict, dict[str, torch.Tensor], list[dict]]:
    from runner.simulation import simulate

    with tempfile.TemporaryDirectory() as d:
        summary = simulate(scenario_from_dict(raw), RunDir(d), _Quiet())
        final = torch.load(f"{d}/final.pt")
        records = RunDir(d).read_metrics()
    return summary, final, records


def _opacus_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=z, sample_rate=q)
    return acc.get_epsilon(delta=delta)


# -- accounting ------------------------------------------------------------------------------


def test_epsilon_matches_opacus_stepwise_accountant():
    for z, q, steps in ((1.1, 0.5, 2), (0.8, 0.1, 30), (2.0, 1.0, 5)):
        ours = epsilon([(z, q, steps)], 1e-5)
        assert ours == pytest.approx(_opacus_epsilon(z, q, steps, 1e-5), rel=1e-9)
    assert epsilon([(0.0, 0.1, 3)], 1e-5) == math.inf
    assert epsilon([], 1e-5) == 0.0


def test_target_epsilon_noise_meets_the_target():
    z = noise_for_epsilon(4.0, 1e-5, 0.1, 30)
    spent = epsilon([(z, 0.1, 30)], 1e-5)
    assert 3.9 < spent <= 4.0 + 1e-9  # within opacus' tolerance, never above the budget
    assert noise_for_epsilon(math.inf, 1e-5, 0.1, 30) == 0.0
    assert noise_for_epsilon(1.0, 1e-5, 0.1, 30) > z  # less budget, more noise


# -- DP-SGD ----------------------------------------------------------------------------------


def test_clipped_noisy_mean_clips_each_example():
    g = [torch.tensor([[3.0, 4.0], [0.3, 0.4]]), torch.zeros(2, 1)]
    out = clipped_noisy_mean(g, clip=1.0, noise=0.0)
    # first example (norm 5) is scaled to norm 1, second (norm 0.5) is kept
    torch.testing.assert_close(out[0], torch.tensor([(0.6 + 0.3) / 2, (0.8 + 0.4) / 2]))
    big = clipped_noisy_mean(g, clip=100.0, noise=0.0)
    torch.testing.assert_close(big[0], g[0].mean(0))
    torch.manual_seed(0)
    noisy = clipped_noisy_mean(g, clip=1.0, noise=1.0)
    assert not torch.allclose(noisy[0], out[0])


def _dp_raw(tiny_raw: dict, **privacy) -> dict:
    tiny_raw["model"] = {"name": "conv4", "width": 8, "norm": "group"}
    tiny_raw["privacy"] = {"example-noise-multiplier": 1.0, "example-clipping-norm": 0.5, **privacy}
    return tiny_raw


def test_dpsgd_gradient_equals_the_plain_mean_without_noise_or_clipping(tiny_raw):
    raw = _dp_raw(tiny_raw, **{"example-noise-multiplier": 0.0, "example-clipping-norm": 1e6})
    exp = build_experiment(scenario_from_dict(raw))
    params = {k: v.requires_grad_(True) for k, v in exp.initial_params().items()}
    task = exp.train_sampler(0, 1)(1)[0]
    plain, loss = exp.learner.value_and_grad(params, task.query_x, task.query_y)
    private, ploss = exp.local_learner.value_and_grad(params, task.query_x, task.query_y)
    assert float(ploss.detach()) == pytest.approx(float(loss.detach()), rel=1e-5)
    for a, b in zip(plain, private, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dpsgd_local_update_reports_one_event_per_task(tiny_raw):
    exp = build_experiment(scenario_from_dict(_dp_raw(tiny_raw)))
    assert exp.local_learner is not exp.learner  # held-out clients adapt without noise
    rate = exp.sampler(0).inclusion_probability()
    # 8 examples per class, 3 of its classes per task, 3 examples per class per task
    n_classes = len(exp.sampler(0).eligible)
    assert rate == pytest.approx(min(1.0, 3 / n_classes * 3 / 8))
    ctx = LocalContext(sample_rate=rate)
    _, metrics = exp.local_learner.local_update(exp.initial_params(), exp.train_sampler(0, 1), ctx)
    # FOMAML: 2 local steps x 2 tasks; each task takes 1 support + 1 query private step, which
    # count as one release of multiplier z / sqrt(2)
    assert metrics["dp-sgd-tasks"] == 4 and metrics["dp-sgd-rate"] == rate
    assert metrics["dp-sgd-noise"] == pytest.approx(1.0 / math.sqrt(2))
    assert "train-loss" in metrics  # the client mod drops it before it leaves the client
    with pytest.raises(ValueError, match="sampling rate"):
        exp.local_learner.local_update(exp.initial_params(), exp.train_sampler(0, 1))


def test_ditto_and_second_order_learners_refuse_dpsgd(tiny_raw):
    for name in ("ditto", "maml", "perfedavg-hf", "protonet"):
        raw = _dp_raw(dict(tiny_raw))
        raw["learner"] = {"name": name}
        with pytest.raises(FedmetaError, match="first-order learner"):
            scenario_from_dict(raw)


def test_central_ledger_counts_what_was_released(tiny_raw):
    """A round with fewer replies than sampled clients adds noise z C / n to a mean of m
    updates: multiplier z m / n. A round the DP wrapper refused releases nothing."""
    from types import SimpleNamespace

    from server.privacy import Privacy
    from server.strategies import build_strategy

    tiny_raw["train"] = {"rounds": 3, "fraction": 1.0}
    tiny_raw["privacy"] = {"central": "server-fixed", "noise-multiplier": 2.0}
    sc = scenario_from_dict(tiny_raw)
    private = Privacy(build_strategy("fedavg", sc.strategy.options), sc)
    reply = [
        SimpleNamespace(content={"metrics": {}, "placement": {"partition-id": n}}) for n in range(4)
    ]
    private.after_round(reply, aggregated=4)
    private.after_round(reply[:2], aggregated=2)
    private.after_round(reply, aggregated=0)  # nothing released (e.g. all rejected)
    assert private.ledger.history == [(2.0, 1.0, 1), (1.0, 1.0, 1)]
    expected = epsilon([(2.0, 1.0, 1), (1.0, 1.0, 1)], 1e-5)
    assert private.summary()["epsilon"] == pytest.approx(expected)
    resumed = Privacy(build_strategy("fedavg", sc.strategy.options), sc)
    resumed.load_state(private.state())
    assert resumed.summary() == private.summary()


# -- the audit -------------------------------------------------------------------------------


def test_attack_metrics():
    members, outsiders = np.arange(100.0, 200.0), np.arange(0.0, 100.0)
    assert roc_auc(members, outsiders) == 1.0 and roc_auc(outsiders, members) == 0.0
    same = np.zeros(50)
    assert roc_auc(same, same) == 0.5
    assert tpr_at_fpr(members, outsiders) == 1.0
    assert tpr_at_fpr(outsiders, members) == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=4000), rng.normal(size=4000)
    assert abs(roc_auc(a, b) - 0.5) < 0.03 and tpr_at_fpr(a, b) < 0.03
    # Hanley-McNeil: at chance with 2000 + 2000 scores the 95% half-width is 0.018; the spread
    # of AUCs over 200 independent draws of 2000 + 2000 normal scores agrees
    assert auc_ci95(0.5, 2000, 2000) == pytest.approx(0.0179, abs=2e-4)
    aucs = [roc_auc(rng.normal(size=2000), rng.normal(size=2000)) for _ in range(200)]
    assert 1.96 * np.std(aucs) == pytest.approx(auc_ci95(0.5, 2000, 2000), rel=0.2)


# -- bad settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("privacy", "extra", "needle"),
    [
        ({"central": "server-fixed", "noise-multiplier": -1.0}, {}, "noise-multiplier = -1.0"),
        ({"central": "server-fixed", "noise-multiplier": 1.0, "delta": 1.0}, {}, "delta = 1.0"),
        ({"central": "server-fixed", "target-epsilon": -2.0}, {}, "target-epsilon"),
        ({"central": "server-fixed"}, {}, "exactly one of noise-multiplier"),
        ({"noise-multiplier": 1.0}, {}, "need central DP"),
        ({"secure-aggregation": True}, {}, "at least 3 clients per round"),
        ({"example-noise-multiplier": 1.0}, {"learner": {"name": "maml"}}, "first-order learner"),
        ({"example-noise-multiplier": 1.0}, {}, "model.norm"),
        (
            {"central": "server-fixed", "noise-multiplier": 1.0},
            {"strategy": {"name": "fedmedian"}},
            "does not aggregate by a mean",
        ),
        (
            {"central": "server-fixed", "noise-multiplier": 1.0, "secure-aggregation": True},
            {"train": {"rounds": 2, "fraction": 1.0}},
            "client-fixed",
        ),
        (
            {"central": "client-fixed", "noise-multiplier": 1.0},
            {"train": {"dropout": 0.2}},
            "dropout",
        ),
        (
            {"central": "server-fixed", "noise-multiplier": 1.0},
            {"strategy": {"name": "fedavg", "weight": "examples"}},
            "strategy.weight = 'examples'",
        ),
        ({"centrel": "server-fixed"}, {}, "did you mean 'central'"),
        ({"central": "server-adaptive", "noise-multiplier": 0.5}, {}, "clients per round / 10"),
        ({"local-epsilon": 2.0}, {}, "local-epsilon"),
        ({"secure-aggregation": True, "secagg-shares": 2}, {}, "at least 3 shares"),
    ],
)
def test_bad_privacy_settings_fail_with_one_line(tiny_raw, privacy, extra, needle):
    tiny_raw.update(extra)
    tiny_raw["privacy"] = privacy
    with pytest.raises(FedmetaError, match=None) as err:
        scenario_from_dict(tiny_raw)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_privacy_setting_exits_2_from_the_cli(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('[privacy]\ncentral = "server-fixed"\nnoise-multiplier = -0.5\n')
    assert run_cli(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "noise-multiplier = -0.5" in err and "Traceback" not in err


# -- simulations -----------------------------------------------------------------------------


def _one_round(tiny_raw: dict, privacy: dict | None = None) -> dict:
    raw = {**tiny_raw, "train": {"rounds": 1, "fraction": 0.75}}
    raw["evaluation"] = {"every": 1, "tasks-per-client": 2, "at-start": False}
    if privacy:
        raw["privacy"] = privacy
    return raw


def test_secure_aggregation_equals_the_plain_aggregate(tiny_raw):
    """SecAgg+ over 3 clients: Flower's protocol (masks, Shamir shares, quantization) runs in
    the simulation and yields FedAvg's weighted mean up to the quantization step."""
    _, plain, _ = _simulate(_one_round(tiny_raw))
    summary, secure, _ = _simulate(_one_round(tiny_raw, {"secure-aggregation": True}))
    start = build_experiment(scenario_from_dict(_one_round(tiny_raw))).initial_params()
    moved = max(float((plain[k] - start[k]).abs().max()) for k in plain)
    gap = max(float((plain[k] - secure[k]).abs().max()) for k in plain)
    assert moved > 1e-3  # the round did train
    assert 0 < gap < 1e-4  # SecAgg+ quantizes (step 16 / 2**22), so it is never exact
    assert summary["rounds"] == 1


def test_central_dp_clips_and_accounts_like_opacus(tiny_raw):
    """Server-side fixed clipping with a tiny norm bounds the round's update; the epsilon the
    run reports after every round equals opacus' accountant computed independently."""
    dp = {"central": "server-fixed", "noise-multiplier": 0.0, "clipping-norm": 1e-3}
    raw = _one_round(tiny_raw, dp)
    _, clipped, _ = _simulate(raw)
    start = build_experiment(scenario_from_dict(raw)).initial_params()
    step = math.sqrt(sum(float((clipped[k] - start[k]).pow(2).sum()) for k in clipped))
    assert 0 < step <= 1e-3 + 1e-6

    raw = {**tiny_raw, "train": {"rounds": 2, "fraction": 0.5}}
    raw["privacy"] = {"central": "client-fixed", "noise-multiplier": 1.3, "delta": 1e-4}
    summary, first, records = _simulate(raw)
    p = summary["privacy"]
    assert p["epsilon"] == pytest.approx(_opacus_epsilon(1.3, 0.5, 2, 1e-4), rel=1e-9)
    per_round = {r["round"]: r["value"] for r in records if r["metric"] == "epsilon"}
    assert per_round[1] == pytest.approx(_opacus_epsilon(1.3, 0.5, 1, 1e-4), rel=1e-9)
    assert per_round[1] < per_round[2] == pytest.approx(p["epsilon"])
    _, second, _ = _simulate(raw)  # the noise is seeded: same scenario, same weights
    for k in first:
        assert torch.equal(first[k], second[k])


def test_dpsgd_run_reports_each_clients_epsilon_like_opacus(tiny_raw):
    """Every client trains in both rounds; the run reports the largest per-client epsilon,
    which equals opacus' for that client's (z / sqrt(2), its sampling rate, 8 tasks); train
    losses never leave the clients."""
    raw = _dp_raw(tiny_raw)
    raw["train"] = {"rounds": 2, "fraction": 1.0}
    summary, _, records = _simulate(raw)
    exp = build_experiment(scenario_from_dict(raw))
    expected = max(
        _opacus_epsilon(1 / math.sqrt(2), exp.sampler(p).inclusion_probability(), 8, 1e-5)
        for p in range(4)
    )
    assert summary["privacy"]["example-epsilon"] == pytest.approx(expected, rel=1e-9)
    train = {r["metric"] for r in records if r["phase"] == "train"}
    assert "example-epsilon" in train and "train-loss" not in train


# -- the epsilon sweep's plots and table -------------------------------------------------------


def _fake_cells():
    from fedmeta.study.results import CellResult

    cells = []
    for strategy, base in (("fomaml", 0.8), ("fedreptile", 0.7)):
        for i, eps in enumerate((math.inf, 4.0, 1.0)):
            summary = {
                "heldout": {
                    "query-acc-post": base - 0.1 * i,
                    "query-acc-post-ci95": 0.01,
                    "query-acc-pre": 0.2,
                    "query-acc-pre-ci95": 0.01,
                },
                "wall-seconds": 60.0,
                "mb-communicated": 1.0,
                "privacy": {"epsilon": eps, "delta": 1e-5},
                "audit": {
                    "loss-auc": 0.6 - 0.04 * i,
                    "calibrated-auc": 0.55 - 0.02 * i,
                    "members": 2000,
                    "nonmembers": 2000,
                },
            }
            point = {"privacy.target-epsilon": eps}
            cells.append(CellResult(strategy, 0, point, [], summary, None))
    return cells


def test_sweep_over_epsilon_plots_inf_and_the_attack_auc(tmp_path):
    from fedmeta.study.plots import _x_positions, plot_sweep, plot_sweep_audit
    from fedmeta.study.results import comparison_table
    from tests.test_study import _has_data_pixels

    pos, log, labels = _x_positions([math.inf, 8.0, 4.0, 2.0, 1.0])
    assert not log and labels == ["inf", "8", "4", "2", "1"]
    assert pos[math.inf] > pos[8.0] > pos[1.0]
    params = {"privacy.target-epsilon": [math.inf, 4.0, 1.0]}
    cells = _fake_cells()
    for path in (
        plot_sweep(cells, params, tmp_path / "sweep.png", "accuracy"),
        plot_sweep_audit(cells, params, tmp_path / "sweep_audit.png", "audit"),
    ):
        assert _has_data_pixels(path)
    table = comparison_table({"target": 0.9, "params": params}, cells)
    assert "epsilon spent" in table and "| 0.600 / 0.550 |" in table and "| inf |" in table


def test_audit_holds_back_non_members_of_the_same_classes(tiny_raw):
    from fedmeta.privacy.audit import audit_task

    tiny_raw["privacy"] = {"audit": True, "audit-holdout": 0.25}
    exp = build_experiment(scenario_from_dict(tiny_raw))
    for pid in range(4):
        full, kept, held = exp.layout.shard(pid), exp.shard(pid), exp.audit_holdout(pid)
        for c, idx in full.examples.items():
            assert len(held.examples[c]) == 2  # a quarter of 8
            assert sorted([*kept.examples[c], *held.examples[c]]) == sorted(idx)
        # training draws only the kept examples
        task = exp.train_sampler(pid, 1)(1)[0]
        assert task.support_x.shape[0] == 3
    assert exp.shard(4) == exp.layout.shard(4)  # held-out clients keep everything
    task, member = audit_task(exp, 0, np.random.default_rng(0))
    assert member.sum() == (~member).sum() == 6  # 3 classes x 2 members and 2 non-members
    assert task.query_x.shape[0] == 12 and task.support_x.shape[0] == 3


def test_audit_command_on_a_saved_run(tmp_path, tiny_raw, capsys):
    import json

    import tomli_w

    tiny_raw["privacy"] = {"audit": True}
    scenario = scenario_from_dict(tiny_raw)
    run = tmp_path / "run"
    run.mkdir()
    (run / "scenario.toml").write_text(tomli_w.dumps(scenario.to_toml()))
    exp = build_experiment(scenario)
    torch.save(exp.initial_params(), run / "final.pt")
    assert run_cli(["audit", str(run), "--tasks", "2"]) == 0
    audit = json.loads((run / "audit.json").read_text())
    # 4 audited clients x 2 tasks x 3 classes x 1 held-back example (8 // 5) on each side
    assert audit["members"] == audit["nonmembers"] == 24
    assert audit["loss-auc-ci95"] == pytest.approx(auc_ci95(audit["loss-auc"], 24, 24))
    # the final parameters are the initial ones: the calibrated attack sees no difference
    assert audit["calibrated-auc"] == 0.5 and audit["calibrated-tpr-at-1pct-fpr"] == 0.0
    assert "membership inference" in capsys.readouterr().out
    assert run_cli(["audit", str(tmp_path)]) == 2
    tiny_raw["privacy"] = {}
    (run / "scenario.toml").write_text(tomli_w.dumps(scenario_from_dict(tiny_raw).to_toml()))
    assert run_cli(["audit", str(run)]) == 2
    assert "privacy.audit = false" in capsys.readouterr().err


@pytest.mark.slow  # 1600 meta-steps, about 30 s
def test_audit_detects_memorised_members(tiny_raw):
    """Meta-train for many steps on a few clients' kept examples: the audit must see the
    members' lower loss (measured: member loss 0.54 vs 0.76, loss AUC 0.58 after 1600 steps)."""
    from fedmeta.privacy.audit import run_audit

    tiny_raw["privacy"] = {"audit": True, "audit-holdout": 0.25, "audit-tasks": 20}
    tiny_raw["learner"] = {"name": "fomaml", "local-steps": 50, "tasks-per-step": 2}
    tiny_raw["learner"]["outer-lr"] = 0.003
    exp = build_experiment(scenario_from_dict(tiny_raw))
    initial = params = exp.initial_params()
    for rnd in range(1, 9):
        for pid in range(4):
            params, _ = exp.learner.local_update(params, exp.train_sampler(pid, rnd))
    audit = run_audit(exp, params, initial)
    assert audit["member-loss-mean"] < audit["nonmember-loss-mean"] - 0.1
    assert audit["loss-auc"] > 0.54
    assert run_audit(exp, initial, initial)["loss-auc"] < audit["loss-auc"] - 0.03
