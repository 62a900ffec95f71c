"""A named registry of functions (verl `core_algos` style): `@REG.register("name")` adds one, `REG.get(name)`
looks one up, and an unknown name is a ValueError that lists what is registered.

A `Registry` is a read-only mapping from name to function, so `list(REG)`, `name in REG` and `REG[name]` work as
for the dicts they replace.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, TypeVar

F = TypeVar("F", bound=Callable)
_REQUIRED = object()


class Registry(Mapping[str, Callable]):
    """Functions of one kind by name. `kind` is the argument or config key that picks one (e.g. "agg"), `name`
    where the registry lives (e.g. "capojax.objectives.AGGREGATIONS"); both appear in error messages."""

    def __init__(self, kind: str, name: str):
        self.kind = kind
        self.name = name
        self._fns: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: `fn` becomes `self[name]`. A name can be registered once."""

        def decorate(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._fns[name].__qualname__}).")
            self._fns[name] = fn
            return fn

        return decorate

    def get(self, name: str, default: Any = _REQUIRED) -> Callable:  # type: ignore[override]
        """The function registered as `name`; for an unknown name `default` when given, else a ValueError naming
        `kind` and the registered names."""
        if name in self._fns:
            return self._fns[name]
        if default is not _REQUIRED:
            return default
        raise ValueError(f"{self.kind}={name!r} is not one of {list(self._fns)}; pick one of those, or register "
                         f"a new one with @{self.name}.register({name!r}).")

    def __getitem__(self, name: str) -> Callable:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def __iter__(self) -> Iterator[str]:
        return iter(self._fns)

    def __len__(self) -> int:
        return len(self._fns)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.name!r}, {list(self._fns)})"
