"""Shared output helpers for subcommands: human text or ``--json``."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and paths so ``json.dumps`` accepts them."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def emit(result: dict, as_json: bool, human: Callable[[dict], str]) -> None:
    """Print ``result`` as JSON on stdout, or the human rendering of it."""
    if as_json:
        json.dump(result, sys.stdout, indent=2, default=to_jsonable)
        sys.stdout.write("\n")
    else:
        print(human(result))
