"""Name registries: every pluggable piece is resolved once, by name, here.

Clients and strategies never switch on strings; they receive objects built from a registry.
A registry may *discover* its entries: given a package, it imports every module of that package
the first time it is asked for a name, and each module registers its own entries. Adding a
learner, a dataset or a server strategy is then one new file, with no import list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedmeta.errors import FedmetaError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to factories, with helpful errors for unknown names.

    Parameters
    ----------
    kind : str
        What the registry holds, used in error messages (for example ``"learner"``).
    package : str, optional
        A package whose modules register the entries (imported on first lookup; modules whose
        name starts with ``_`` are skipped).
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self._package = package
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            doc = (getattr(obj, "__doc__", None) or "").strip()
            self._help[name] = help or (doc.splitlines()[0] if doc else "")
            return obj

        return deco

    def _discover(self) -> None:
        package, self._package = self._package, None
        if package is None:
            return
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")

    def get(self, name: str, key: str | None = None) -> T:
        """The entry named ``name``; an unknown name raises :class:`FedmetaError` naming ``key``."""
        self._discover()
        try:
            return self._items[name]
        except KeyError:
            where = f"{key} = {name!r}" if key else repr(name)
            raise FedmetaError(
                f"unknown {self.kind} {where}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._items)

    def describe(self, name: str) -> str:
        self._discover()
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
