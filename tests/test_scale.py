"""Scale (issue 12): a small pool of simulation nodes serves any number of clients, and
held-out evaluation may score a seeded sample of the held-out clients."""

from __future__ import annotations

import pytest
import tomli_w
from conftest import Quiet
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedmeta.results import RunDir
from fedmeta.scenario import scenario_from_dict
from runner.cli import run_cli
from runner.simulation import POOL_EVAL, pool_size, simulate
from server.loop import heldout_sample
from server.roster import Roster, chunks, sent_partition


@pytest.mark.usefixtures("flower_task")
def test_a_pool_addresses_each_client_of_an_exchange_on_a_node_of_its_own():
    roster = Roster(pool=[7, 8, 9])
    config = ConfigRecord({"server-round": 3})
    template = Message(
        RecordDict({"arrays": ArrayRecord(), "config": config}),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
    )
    msgs = roster.address(template, [40, 2, 1234])
    assert [m.metadata.dst_node_id for m in msgs] == [7, 8, 9]
    assert [sent_partition(m) for m in msgs] == [40, 2, 1234]
    assert all(m.content["config"]["server-round"] == 3 for m in msgs)
    assert all(m.metadata.message_type == MessageType.TRAIN for m in msgs)
    assert "partition-id" not in config  # the template is not changed
    with pytest.raises(ValueError, match="4 clients in one exchange but a pool of 3"):
        roster.address(template, [1, 2, 3, 4])
    per_site = Roster(node_of={0: 100, 1: 101})
    assert per_site.nodes([1, 0]) == [101, 100] and per_site.capacity == 2
    assert chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_the_pool_is_sized_by_the_largest_exchange_not_by_the_clients(tiny_raw):
    def size(train, heldout, fraction):
        tiny_raw["clients"] = {"train": train, "heldout": heldout}
        tiny_raw["train"]["fraction"] = fraction
        return pool_size(scenario_from_dict(tiny_raw))

    assert size(10_000, 1_000, 0.001) == POOL_EVAL  # 10 train per round, held-out in exchanges
    assert size(10_000, 1_000, 0.004) == 40  # a round's sample
    assert size(50, 10, 0.2) == 10
    assert size(4, 2, 1.0) == 4
    assert size(400, 4, 0.5) == 200  # a round's sample, each client on its own node


def test_a_heldout_sample_is_seeded_and_the_final_evaluation_scores_everyone():
    heldout = list(range(1000, 1100))
    a = heldout_sample(heldout, 10, seed=5, rnd=3)
    assert a == heldout_sample(heldout, 10, seed=5, rnd=3) == sorted(a)
    assert len(set(a)) == 10 and set(a) <= set(heldout)
    assert a != heldout_sample(heldout, 10, seed=5, rnd=4)
    assert heldout_sample(heldout, None, seed=5, rnd=3) == heldout
    assert heldout_sample(heldout, 500, seed=5, rnd=3) == heldout


def test_evaluation_clients_beyond_the_heldout_clients_is_refused(tiny_raw, tmp_path, capsys):
    tiny_raw["evaluation"]["clients"] = 3
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(tiny_raw))
    assert run_cli(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "evaluation.clients = 3 but clients.heldout = 2" in err


@pytest.mark.usefixtures("shared_ray")
def test_thousands_of_clients_run_on_a_pool_and_evaluate_a_sample_then_everyone(tmp_path):
    """3,000 training and 300 held-out sinusoid clients on a pool of 64 nodes: rounds sample
    10 clients, evaluations score 20 held-out clients, the last one all 300."""
    n, held = 3000, 300
    raw = {
        "name": "many",
        "seed": 1,
        "data": {"name": "sinusoid", "num-functions": 3 * (n + held)},
        "task": {"n-way": 1, "k-shot": 5, "query": 5},
        "clients": {"train": n, "heldout": held},
        "model": {"name": "mlp", "hidden": [16]},
        "learner": {"name": "fomaml", "local-steps": 1, "tasks-per-step": 2},
        "train": {"rounds": 2, "fraction": 10 / n},
        "evaluation": {"every": 1, "at-start": False, "tasks-per-client": 2, "clients": 20},
        "backend": {"num-cpus": 1},
    }
    raw["data"]["heldout-fraction"] = held / (n + held)
    sc = scenario_from_dict(raw)
    assert pool_size(sc) == POOL_EVAL
    run = RunDir(tmp_path / "run")
    summary = simulate(sc, run, Quiet())
    records = [r for r in run.read_metrics() if r["metric"] in ("num-clients", "clients")]
    by = {(r["phase"], r["round"]): r["value"] for r in records}
    assert by == {
        ("train", 1): 10,
        ("heldout", 1): 20,
        ("train", 2): 10,
        ("heldout", 2): held,
    }
    assert summary["heldout"]["num-clients"] == held
