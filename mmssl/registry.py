"""A small name -> constructor registry.

Every encoder, objective and task registers itself under a unique name; the
modules are imported explicitly in each package's ``__init__``, so the list of
what exists is readable in one place.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from mmssl.errors import MmsslError


class RegistryError(MmsslError, KeyError):
    """An unknown or duplicate name."""

    def __str__(self) -> str:  # KeyError quotes its message; a one-line error must not
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: ``@ENCODERS.register("vit_tiny")``. A duplicate name raises. A class whose ``name``
        attribute is empty (a task) takes the registered name, so the name is written once."""

        def add(obj: Any) -> Any:
            if name in self._items:
                raise RegistryError(f"{self.kind} '{name}' is already registered")
            if isinstance(obj, type) and getattr(obj, "name", None) == "":
                obj.name = name
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> Any:
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(f"unknown {self.kind} '{name}'; known: {known}")
        return self._items[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Construct ``name`` and remember the spec, so the object can be rebuilt from JSON."""
        obj = self.get(name)(**kwargs)
        try:
            obj.spec = {"name": name, "kwargs": kwargs}
        except AttributeError:  # objects that refuse attributes are still valid products
            pass
        return obj

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


ENCODERS = Registry("encoder")
OBJECTIVES = Registry("objective")
TASKS = Registry("task")
