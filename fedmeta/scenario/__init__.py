"""Scenarios: the schema of a scenario file, and reading, overriding and validating one."""

from fedmeta.scenario.load import (
    apply_overrides,
    carried_options,
    load_scenario,
    parse_value,
    read_scenario,
    scenario_from_dict,
)
from fedmeta.scenario.schema import Scenario

__all__ = [
    "Scenario",
    "apply_overrides",
    "carried_options",
    "load_scenario",
    "parse_value",
    "read_scenario",
    "scenario_from_dict",
]
