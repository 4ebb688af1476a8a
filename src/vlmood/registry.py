"""One registry mechanism for every kind of plug-in (scores, methods, models, benchmarks).

A decorator registers a class or factory under a name; ``create``/``list`` find it. Unknown
names raise with the valid choices. Never keep a second hand-written name table.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from vlmood.errors import VlmoodError

T = TypeVar("T")


class UnknownNameError(VlmoodError, KeyError):
    """Raised when a name is not registered; the message lists the valid choices."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> factory table for one kind of plug-in."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str, obj: Callable[..., T] | None = None):
        """Register ``obj`` under ``name``; usable as ``@REG.register("name")``."""
        key = name.lower()

        def deco(o: Callable[..., T]) -> Callable[..., T]:
            if key in self._entries and self._entries[key] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = o
            try:
                o.registered_name = key  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return o

        return deco(obj) if obj is not None else deco

    def get(self, name: str) -> Callable[..., T]:
        key = name.lower()
        if key not in self._entries:
            choices = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {choices}")
        return self._entries[key]

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern.lower()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def items(self):
        return sorted(self._entries.items())
