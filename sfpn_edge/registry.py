"""A named table of specs, shared by the backend and the detector registries."""
from __future__ import annotations

import importlib
from typing import Dict, Generic, Tuple, TypeVar

from sfpn_edge.errors import SfpnError

T = TypeVar("T")


def import_impl(impl: str):
    """The object named by ``"package.module:Attribute"`` (ImportError when it cannot be imported)."""
    module, _, attr = impl.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """Specs by name, in registration order; ``kind`` names them in errors ("backend", "detector")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._specs: Dict[str, T] = {}

    def add(self, name: str, spec: T) -> T:
        """Add (or replace) ``spec`` under ``name``; returns ``spec``."""
        if not name:
            raise SfpnError(f"a {self.kind} needs a name")
        self._specs[name] = spec
        return spec

    def remove(self, name: str) -> None:
        self._specs.pop(name, None)

    def names(self) -> Tuple[str, ...]:
        return tuple(self._specs)

    def specs(self) -> Tuple[T, ...]:
        return tuple(self._specs.values())

    def get(self, name: str) -> T:
        try:
            return self._specs[name]
        except KeyError:
            raise SfpnError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._specs)}") from None
