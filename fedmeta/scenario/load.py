"""Scenario files: TOML -> a validated, frozen :class:`~fedmeta.scenario.schema.Scenario`.

Every table rejects unknown keys; named tables (``[data]``, ``[partition]``, ``[model]``,
``[learner]``, ``[strategy]``) are validated against the options of the entry their ``name``
picks from its registry. Any problem is raised as one :class:`FedmetaError` line that names the
offending key and the fix.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ValidationError

from fedmeta.data import DATASETS
from fedmeta.errors import FedmetaError
from fedmeta.options import kebab
from fedmeta.privacy.checks import check_privacy
from fedmeta.registry import Registry
from fedmeta.scenario.schema import (
    DEFAULT_NAMES,
    NAMED_TABLES,
    PLAIN_TABLES,
    TOP_KEYS,
    DataSection,
    Named,
    Scenario,
)


def _suggest(key: str, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return (
        f"; did you mean {close[0]!r}?"
        if close
        else f"; allowed keys: {', '.join(sorted(allowed))}"
    )


def _validate(model: type[BaseModel], raw: dict, table: str) -> BaseModel:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{table}.{loc}" if table else loc
        if err["type"] == "extra_forbidden":
            allowed = [kebab(f) for f in model.model_fields]
            raise FedmetaError(
                f"unknown scenario key {key!r}{_suggest(str(err['loc'][0]), allowed)}"
            ) from None
        if not err["loc"] and err["type"] == "value_error":  # a check across a table's keys
            reason = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
            raise FedmetaError(f"[{table}] {reason}") from None
        raise FedmetaError(
            f"scenario key {key!r}: {err['msg'].lower()} (got {err.get('input')!r})"
        ) from None


def _named(raw: dict, table: str, registry: Registry, extra_keys: tuple[str, ...] = ()):
    if not isinstance(raw, dict):
        raise FedmetaError(f"scenario key {table!r} must be a table, e.g. [{table}]")
    raw = dict(raw)
    name = raw.pop("name", DEFAULT_NAMES[table])
    if not isinstance(name, str):
        raise FedmetaError(f"scenario key '{table}.name' must be a string (got {name!r})")
    spec = registry.get(name, key=f"{table}.name")
    extras = {k: raw.pop(k) for k in extra_keys if k in raw}
    return name, _validate(spec.Options, raw, table), extras


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax when it parses (``3``, ``0.1``, ``true``, ``[1, 2]``),
    otherwise a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def carried_options(table: str, old: dict, new_name: str) -> dict:
    """The keys of ``old`` (a named table) that entry ``new_name`` of its registry also accepts:
    switching ``learner.name`` keeps ``local-steps``; switching ``partition.name`` to
    ``dirichlet`` drops ``classes-per-client``."""
    registry = NAMED_TABLES.get(table)
    if registry is None or new_name not in registry.names():
        return dict(old)
    accepted = {kebab(f) for f in registry.get(new_name).Options.model_fields}
    return {k: v for k, v in old.items() if k in accepted or k == "name"}


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides with dotted keys (``learner.inner-lr=0.1``). Setting a
    named table's ``name`` keeps only the options the new entry accepts."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FedmetaError(f"--set {item!r} must look like key=value, e.g. train.rounds=5")
        *tables, leaf = key.strip().split(".")
        node = raw
        for t in tables:
            node = node.setdefault(t, {})
            if not isinstance(node, dict):
                raise FedmetaError(f"--set {key!r}: {t!r} is not a table")
        node[leaf] = parse_value(value.strip())
        if leaf == "name" and len(tables) == 1 and isinstance(node[leaf], str):
            kept = carried_options(tables[0], node, node[leaf])
            node.clear()
            node.update(kept)
    return raw


def scenario_from_dict(raw: dict, default_name: str = "scenario") -> Scenario:
    """Validate a raw scenario mapping (as read from TOML)."""
    for key in raw:
        if key not in TOP_KEYS:
            raise FedmetaError(f"unknown scenario key {key!r}{_suggest(key, TOP_KEYS)}")
    fields: dict[str, Any] = {}
    for key in ("name", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise FedmetaError(f"scenario key {key!r} must be a string (got {raw[key]!r})")
    fields["name"] = raw.get("name", default_name)
    fields["description"] = raw.get("description", "")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise FedmetaError(f"scenario key 'seed' must be a non-negative integer (got {seed!r})")
    fields["seed"] = seed
    for table, model in PLAIN_TABLES.items():
        value = raw.get(table, {})
        if not isinstance(value, dict):
            raise FedmetaError(f"scenario key {table!r} must be a table, e.g. [{table}]")
        fields[table] = _validate(model, value, table)
    name, opts, extras = _named(raw.get("data", {}), "data", DATASETS, ("root", "download", "seed"))
    for key, typ in (("root", str), ("download", bool), ("seed", int)):
        if key in extras and not isinstance(extras[key], typ):
            raise FedmetaError(
                f"scenario key 'data.{key}' must be a {typ.__name__} (got {extras[key]!r})"
            )
    fields["data"] = DataSection(name=name, options=opts, **extras)
    for table, registry in NAMED_TABLES.items():
        name, opts, _ = _named(raw.get(table, {}), table, registry)
        fields[table] = Named(name=name, options=opts)
    scenario = Scenario(**fields)
    check_privacy(scenario)
    learner = NAMED_TABLES["learner"].get(scenario.learner.name)
    task = scenario.task
    if task.training_way != task.n_way and not learner.any_way:
        registry = NAMED_TABLES["learner"]
        wide = ", ".join(n for n in registry.names() if registry.get(n).any_way)
        raise FedmetaError(
            f"task.train-way = {task.train_way} but learner.name = {scenario.learner.name!r} "
            f"has a fixed {task.n_way}-way head; remove task.train-way, or use a learner that "
            f"sets its head from the support set ({wide})"
        )
    for option, value in learner.model_needs.items():
        if getattr(scenario.model.options, option, None) != value:
            key = f"model.{kebab(option)}"
            raise FedmetaError(
                f"learner.name = {scenario.learner.name!r} needs {key} = "
                f"{json.dumps(value)} (got model.name = {scenario.model.name!r} without it); "
                f"add it to [model]"
            )
    learner.check_task(scenario.learner.options, task)
    return scenario


def read_scenario(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A scenario file as a raw mapping, with overrides applied and ``name`` defaulting to
    the file's stem (not validated yet)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FedmetaError(f"scenario file {str(path)!r} not found; check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise FedmetaError(f"scenario file {str(path)!r} is not valid TOML: {exc}") from None
    raw = apply_overrides(raw, overrides or [])
    raw.setdefault("name", path.stem)
    return raw


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override and validate a scenario file."""
    return scenario_from_dict(read_scenario(path, overrides))
