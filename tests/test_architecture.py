"""The layers point one way, without cycles, and components plug in as one file.

* ``fedmeta`` (the core) never imports Flower, Ray, the apps or the runner;
* ``server`` and ``clients`` (the Flower apps) import the core, never each other;
* ``runner`` (simulation, study runner, CLI) sits on top and nothing imports it;
* no module takes part in an import cycle, counting every import: at module level, inside
  functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import itertools
import json
import pickle
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedmeta.models import MODELS
from fedmeta.registry import Registry
from fedmeta.strategies import STRATEGIES
from server.roster import Roster, sent_partition
from server.strategies import build_strategy

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fedmeta", "clients", "server", "runner")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (absolute names; ``from a import b``
    counts as ``a.b`` when that is a module, else ``a``)."""
    mods = _modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in mods else base)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: {m for m in _imports(name, path) if m in mods} for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself
    (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = itertools.count()

    def visit(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["e"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("fedmeta", {"flwr", "ray", "clients", "server", "runner"}),
        ("server", {"clients", "runner"}),
        ("clients", {"server", "runner"}),
    ],
)
def test_layers_point_one_way(layer, forbidden):
    bad = {
        (name, imported)
        for name, path in _modules().items()
        if _top(name) == layer
        for imported in _imports(name, path)
        if _top(imported) in forbidden
    }
    assert bad == set()


def test_only_the_runner_and_the_apps_import_flower():
    users = {
        _top(name)
        for name, path in _modules().items()
        if any(_top(m) == "flwr" for m in _imports(name, path))
    }
    assert users == {"clients", "server", "runner"}


def _loaded_after(code: str, heavy=("flwr", "ray", "torch", "opacus")) -> list[str]:
    script = f"import sys\n{code}\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_scenario_parsing_imports_neither_flower_nor_opacus():
    code = "from fedmeta.scenario import load_scenario\nload_scenario('scenarios/quickstart.toml')"
    assert _loaded_after(code) == ["torch"]  # the learner and model registries are torch modules


def test_study_results_plots_and_report_import_neither_torch_nor_flower():
    code = "import fedmeta.study.results, fedmeta.study.plots, fedmeta.study.report"
    assert _loaded_after(code) == []


def _fake_study(out: Path) -> None:
    """A finished two-cell study written by hand: what ``fedmeta compare`` leaves behind."""
    cells = []
    for strategy, acc in (("fedmaml", 0.6), ("fomaml", 0.5)):
        run = out / "runs" / f"{strategy}_seed0"
        run.mkdir(parents=True)
        records = []
        for rnd in (0, 1, 2):
            heldout = {
                "query-acc-post": acc + 0.1 * rnd,
                "query-acc-post-ci95": 0.02,
                "query-acc-pre": 0.2,
                "query-acc-post-per-client": [acc, acc + 0.1],
            }
            system = {"wall-seconds": 10.0 * rnd, "bytes-communicated": 1e6 * rnd}
            for phase, metrics in (("heldout", heldout), ("system", system)):
                records += [
                    {"round": rnd, "phase": phase, "metric": k, "value": v}
                    for k, v in metrics.items()
                ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        summary = {
            "name": f"s/{strategy}_seed0",
            "rounds": 2,
            "heldout": {k: v for k, v in heldout.items() if not k.endswith("per-client")},
            "wall-seconds": 20.0,
            "mb-communicated": 1.9,
        }
        (run / "summary.json").write_text(json.dumps(summary))
        cells.append({"strategy": strategy, "seed": 0, "params": {}, "dir": run.name})
    manifest = {"kind": "compare", "name": "s", "strategies": ["fedmaml", "fomaml"]}
    manifest |= {"seeds": [0], "params": {}, "target": 0.7, "adapt-steps": [0], "cells": cells}
    (out / "study.json").write_text(json.dumps(manifest))


def test_fedmeta_plot_draws_a_study_without_torch_or_flower(tmp_path):
    _fake_study(tmp_path)
    code = f"from runner.cli import run_cli\nassert run_cli(['plot', {str(tmp_path)!r}]) == 0"
    assert _loaded_after(code) == []
    assert (tmp_path / "acc_vs_round.png").stat().st_size > 10_000
    table = (tmp_path / "table.md").read_text()
    assert "| fedmaml | 1 | 0.800 ± 0.020 (tasks)" in table


# -- components plug in as one file ----------------------------------------------------------


def test_a_registry_discovers_every_module_of_its_package(tmp_path, monkeypatch):
    pkg = tmp_path / "plugins_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    registry_code = "from fedmeta.registry import Registry\nREG = Registry('thing', __name__)\n"
    (pkg / "_registry.py").write_text(registry_code.replace("__name__", "'plugins_for_test'"))
    for name in ("alpha", "beta"):
        (pkg / f"{name}.py").write_text(
            textwrap.dedent(f'''
                from plugins_for_test._registry import REG

                @REG.register("{name}")
                class Thing:
                    """A {name} thing."""
            ''')
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    from plugins_for_test._registry import REG

    assert REG.names() == ["alpha", "beta"]
    assert REG.describe("beta") == "A beta thing."
    assert "gamma" not in REG


def test_discovery_is_lazy():
    registry = Registry("thing", "no.such.package")
    registry.register("x")(object)  # registering never imports the package
    with pytest.raises(ModuleNotFoundError):
        registry.names()


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _snapshot(strategy) -> dict[str, bytes]:
    return {k: pickle.dumps(v) for k, v in vars(strategy).items()}


PER_ROUND = {"dropped"}
"""Mixin attributes rewritten every round from the seed (not carried over)."""


@pytest.mark.parametrize("name", STRATEGIES.names())
@pytest.mark.usefixtures("flower_task")
def test_every_strategy_declares_the_state_it_carries_between_rounds(name):
    """Whatever a strategy changes in itself over two rounds must be in its spec's ``state``,
    or a resumed run would silently start it again from nothing."""
    spec = STRATEGIES.get(name)
    strategy = build_strategy(name, spec.Options())
    nodes = [101, 102, 103, 104, 105]
    strategy.bind(Roster(pool=nodes), 5, 0, 1.0, 0, set())
    arrays = ArrayRecord({"w": torch.zeros(4)})
    changed: set[str] = set()
    for rnd in (1, 2):
        before = _snapshot(strategy)
        msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(), _Grid(nodes)))
        replies = [
            Message(
                RecordDict(
                    {
                        "arrays": ArrayRecord({"w": torch.full((4,), float(i + rnd))}),
                        "metrics": MetricRecord({"num-examples": 1 + i}),
                        "placement": ConfigRecord({"partition-id": sent_partition(m)}),
                    }
                ),
                reply_to=m,
            )
            for i, m in enumerate(msgs)
        ]
        arrays, _ = strategy.aggregate_train(rnd, replies)
        assert arrays["w"].numpy().dtype == np.float32  # the dtype the clients sent
        after = _snapshot(strategy)
        changed |= {k for k in after if before.get(k) != after[k]}
    assert changed - PER_ROUND <= set(spec.state)
    assert all(hasattr(strategy, k) for k in spec.state)  # no stale declaration
    restored = build_strategy(name, spec.Options())
    restored.load_state(strategy.state())
    assert {k: pickle.dumps(getattr(restored, k)) for k in spec.state} == {
        k: pickle.dumps(getattr(strategy, k)) for k in spec.state
    }


def _literal_choices(options_cls) -> list[dict]:
    """Every combination of the options' Literal-typed fields (the rest at their defaults)."""
    fields = {
        name: typing.get_args(f.annotation)
        for name, f in options_cls.model_fields.items()
        if typing.get_origin(f.annotation) is typing.Literal
    }
    return [dict(zip(fields, combo, strict=True)) for combo in itertools.product(*fields.values())]


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_says_truly_whether_it_mixes_examples(name):
    """``mixes_examples`` is what DP-SGD's check trusts: it must match the model's behaviour
    (an example's output computed alone equals its output inside a batch, or not)."""
    cls = MODELS.get(name)
    torch.manual_seed(0)
    x = torch.randn(6, 1, 28, 28)
    for values in _literal_choices(cls.Options):
        options = cls.Options(**values)
        model = cls((1, 28, 28), 3, **options.model_dump())
        with torch.no_grad():
            alone, batched = model(x[:1]), model(x)[:1]
        assert cls.mixes_examples(options) == (not torch.allclose(alone, batched, atol=1e-6))
