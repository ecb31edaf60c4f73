"""Study planning: one scenario as a grid of cells (strategy x seed [x parameter values]).

``fedmeta compare`` runs every strategy with every seed; ``fedmeta sweep`` adds a grid over one
or two scenario keys. A *strategy* is a named set of scenario overrides, looked up in this order:

1. a ``[compare.define.<name>]`` table of the scenario (a partial scenario merged into it);
2. a built-in preset (:data:`PRESETS`: ``fedmaml``, ``fedreptile``, ``fedavg-ft``, ``fedprox``,
   ``local-only``, ``centralized``);
3. a learner name from the registry (``learner.name = <name>``).

A strategy that changes the learner keeps the scenario learner's outer optimiser unless it names
one (``outer-optimizer``): the scenario's ``outer-lr`` was chosen for that optimiser, and a
comparison should vary the algorithm, not the optimiser. (Learners default to their papers'
optimisers, which differ: SGD for Reptile, Per-FedAvg, pFedMe, Ditto and FedAvg.)

Within one seed every cell shares the scenario seed, hence identical client partitions and
identical evaluation tasks (held-out tasks are keyed by seed and client only). Seed ``i`` of a
study is ``scenario.seed + i``. Every cell is validated here, before anything runs; the runner
(``runner.study``) then runs each as an ordinary run directory under ``<out>/runs/``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedmeta.errors import FedmetaError
from fedmeta.learners import LEARNERS
from fedmeta.protocol import sample_size
from fedmeta.registry import Registry
from fedmeta.scenario import Scenario, carried_options, parse_value, scenario_from_dict

PRESETS: Registry[Callable[[Scenario], dict]] = Registry("strategy preset")
"""Built-in strategies that are not plain learner names: each maps the (validated) scenario it
is applied to onto the overrides that make the strategy."""


def _learner(name: str) -> Callable[[Scenario], dict]:
    return lambda sc: {"learner": {"name": name}}


PRESETS.register("fedmaml", help="learner maml (second-order MAML on every client)")(
    _learner("maml")
)
PRESETS.register("fedreptile", help="learner reptile")(_learner("reptile"))
PRESETS.register(
    "fedavg-ft", help="learner fedavg: global classifier, new clients fine-tune a fresh head"
)(_learner("fedavg"))


@PRESETS.register("fedprox", help="learner fedavg with Flower's FedProx (proximal-mu)")
def _fedprox(sc: Scenario) -> dict:
    return {"learner": {"name": "fedavg"}, "strategy": {"name": "fedprox"}}


@PRESETS.register("local-only", help="no training (rounds = 0): new clients train from scratch")
def _local_only(sc: Scenario) -> dict:
    """No federation: rounds = 0; a new client trains from the initialisation with at least
    20 SGD steps."""
    steps = max(20, sc.learner.options.eval_inner_steps or sc.learner.options.inner_steps)
    return {"learner": {"name": "local-only", "eval-inner-steps": steps}, "train": {"rounds": 0}}


@PRESETS.register("centralized", help="all training data pooled, one client takes every step")
def _centralized(sc: Scenario) -> dict:
    """The scenario's learner on the pooled data of all training clients, with no federation:
    every training client holds the whole train pool, and one client per round takes as many
    meta-steps as all sampled clients together would (same compute, done sequentially)."""
    per_round = sample_size(sc.train.fraction, sc.clients.train)
    return {
        "partition": {"name": "pooled"},
        "train": {"fraction": 1.0 / sc.clients.train},
        "learner": {"local-steps": sc.learner.options.local_steps * per_round},
    }


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, tables recursively (neither is modified). When a named
    table changes its ``name``, only the old options the new entry accepts are kept."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            if "name" in value and value["name"] != old.get("name", value["name"]):
                old = carried_options(key, old, value["name"])
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def strategy_raw(
    name: str, plain: dict, point: tuple[tuple[str, Any], ...], defined: dict[str, dict]
) -> dict:
    """The raw scenario of strategy ``name`` at sweep ``point`` (see the module docstring).

    A defined strategy or a learner name is merged first and the swept values last (the sweep
    wins). A preset is computed from the scenario *with* the swept values and applied last, so
    its rules hold at every point (``centralized``'s equal compute, ``local-only``'s zero
    rounds).
    """

    def at_point(raw: dict) -> dict:
        for key, value in point:
            raw = _set(raw, key, value)
        return raw

    def same_optimizer(raw: dict) -> dict:
        learner = raw.get("learner", {})
        if "outer-optimizer" in learner or learner.get("name") == plain_learner.name:
            return raw
        keep = {"outer-optimizer": plain_learner.options.outer_optimizer}
        return deep_merge(raw, {"learner": keep})

    plain_learner = scenario_from_dict(plain).learner
    if name in defined:
        return same_optimizer(at_point(deep_merge(plain, defined[name])))
    if name in PRESETS:
        raw = at_point(plain)
        return same_optimizer(deep_merge(raw, PRESETS.get(name)(scenario_from_dict(raw))))
    if name in LEARNERS.names():
        return same_optimizer(at_point(deep_merge(plain, {"learner": {"name": name}})))
    known = sorted({*defined, *PRESETS, *LEARNERS.names()})
    raise FedmetaError(
        f"unknown strategy {name!r}; define it in [compare.define.{name}] or use one of: "
        f"{', '.join(known)}"
    )


def parse_param(spec: str) -> tuple[str, list[Any]]:
    """``--param partition.alpha=0.05,0.1`` -> ``("partition.alpha", [0.05, 0.1])``."""
    key, sep, values = spec.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not items:
        raise FedmetaError(
            f"--param {spec!r} must look like key=v1,v2,..., e.g. partition.alpha=0.1,1,100"
        )
    return key.strip(), [parse_value(v) for v in items]


def _set(raw: dict, key: str, value: Any) -> dict:
    *tables, leaf = key.split(".")
    over: dict = {leaf: value}
    for t in reversed(tables):
        over = {t: over}
    return deep_merge(raw, over)


@dataclass(frozen=True)
class Cell:
    """One run of a study."""

    strategy: str
    seed: int
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def dirname(self) -> str:
        extra = "".join(f"_{k.split('.')[-1]}={v}" for k, v in self.params)
        return f"{self.strategy}_seed{self.seed}{extra}"

    @property
    def tb_name(self) -> str:
        """The cell's TensorBoard run, ``strategy/seedN[/key=value...]``: TensorBoard groups
        and overlays runs by these folders."""
        extra = "".join(f"/{k}={v}".replace(" ", "") for k, v in self.params)
        return f"{self.strategy}/seed{self.seed}{extra}"

    def to_json(self) -> dict:
        return {"strategy": self.strategy, "seed": self.seed, "params": dict(self.params)}


@dataclass
class Study:
    """A planned study: its cells with their validated scenarios."""

    kind: str
    name: str
    strategies: list[str]
    seeds: list[int]
    params: dict[str, list[Any]]
    target: float
    adapt_steps: list[int]
    adapt_tasks: int
    cells: list[tuple[Cell, Scenario]] = field(default_factory=list)

    def manifest(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "strategies": self.strategies,
            "seeds": self.seeds,
            "params": self.params,
            "target": self.target,
            "adapt-steps": self.adapt_steps,
            "adapt-tasks": self.adapt_tasks,
            "cells": [
                c.to_json() | {"dir": c.dirname, "scenario-sha256": scenario_hash(sc)}
                for c, sc in self.cells
            ],
        }


def plan_study(
    raw: dict,
    kind: str,
    strategies: list[str] | None = None,
    seeds: int | None = None,
    params: dict[str, list[Any]] | None = None,
) -> Study:
    """Validate every cell of a study up front (bad input fails before anything runs)."""
    base = scenario_from_dict(raw)
    opts = base.compare
    strategies = strategies or list(opts.strategies) or [base.learner.name]
    if len(set(strategies)) != len(strategies):
        raise FedmetaError(f"--strategies names a strategy twice: {','.join(strategies)}")
    n_seeds = seeds or opts.seeds
    params = params or {}
    plain = {k: v for k, v in raw.items() if k != "compare"}
    study = Study(
        kind,
        base.name,
        strategies,
        [base.seed + i for i in range(n_seeds)],
        params,
        opts.target,
        sorted(set(opts.adapt_steps)),
        opts.adapt_tasks,
    )
    grid: list[tuple[tuple[str, Any], ...]] = [()]
    for key, values in params.items():
        grid = [g + ((key, v),) for g in grid for v in values]
    for strategy in strategies:  # unknown names fail before anything else
        strategy_raw(strategy, plain, (), opts.define)
    # seed-major order: a study cut short still has every strategy for its first seeds
    for seed in study.seeds:
        for point in grid:
            for strategy in strategies:
                cell_raw = strategy_raw(strategy, plain, point, opts.define)
                cell = Cell(strategy, seed, point)
                cell_raw |= {"seed": seed, "name": f"{base.name}/{cell.dirname}"}
                try:
                    study.cells.append((cell, scenario_from_dict(cell_raw)))
                except FedmetaError as exc:
                    where = f"strategy {strategy!r}" + "".join(f", {k}={v}" for k, v in point)
                    raise FedmetaError(f"{where}: {exc}") from None
    return study


def scenario_hash(scenario: Scenario) -> str:
    return hashlib.sha256(scenario.to_json().encode()).hexdigest()[:16]
