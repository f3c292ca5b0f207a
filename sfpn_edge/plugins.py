"""Plugins: modules named in ``$SFPN_EDGE_PLUGINS`` (comma-separated) are imported once, when a
registry is first used, so a backend or detector they register exists in every process sfpn-edge
starts (the CLI, the bench's measuring subprocesses) without changing sfpn-edge itself."""
from __future__ import annotations

import importlib
import os
import warnings

ENV = "SFPN_EDGE_PLUGINS"
_loaded: set = set()


def load() -> None:
    """Import every plugin module not imported yet; one that fails to import is reported, not fatal."""
    for name in (part.strip() for part in os.environ.get(ENV, "").split(",")):
        if not name or name in _loaded:
            continue
        _loaded.add(name)
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken plugin must not take the built-in backends down with it
            warnings.warn(f"${ENV}: cannot import {name!r}: {type(exc).__name__}: {exc}", stacklevel=2)
