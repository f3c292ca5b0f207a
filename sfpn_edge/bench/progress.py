"""Progress display for the bench: a rich bar on a terminal, else ``sfpn_edge.progress`` (a plain
bar on a terminal without rich, one line per step on a pipe or log file)."""
from __future__ import annotations

import sys
from typing import Callable

from sfpn_edge.progress import Progress as PlainProgress


class Progress:
    """A rich progress bar when rich is installed and stderr is a terminal, else plain progress on
    stderr (a pipe or log file sees every step as a line)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.plain = PlainProgress(total, "steps", enabled=enabled)
        if enabled and sys.stderr.isatty():
            try:
                from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
            except ImportError:
                return
            from rich.console import Console

            self.bar = RichProgress(TextColumn("{task.description:<40}"), BarColumn(),
                                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                    console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("starting", total=total)
            self.bar.start()

    def step(self, label: str, fn: Callable[[], dict]) -> dict:
        if self.bar is not None:
            self.bar.update(self.task, description=label)
        else:
            self.plain.step(label)
        result = fn()
        if self.bar is not None:
            self.bar.advance(self.task)
        return result

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        else:
            self.plain.close()
