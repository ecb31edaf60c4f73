"""Base class for every validated options table (kebab-case keys, unknown keys rejected)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


def kebab(name: str) -> str:
    """``inner_lr`` -> ``inner-lr``: scenario files and records use kebab-case keys."""
    return name.replace("_", "-")


class Options(BaseModel):
    """Frozen, strict-keyed options; fields are snake_case in Python and kebab-case in TOML."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=kebab, populate_by_name=True
    )

    def to_toml(self) -> dict:
        """The options as a TOML-ready dict with kebab-case keys (``None`` values dropped)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
