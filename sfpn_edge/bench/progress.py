"""Progress display for the bench: a rich bar on a terminal, else one line per step on stderr."""
from __future__ import annotations

import sys
from typing import Callable


class Progress:
    """A rich progress bar when rich is installed and stderr is a terminal, else one line per step
    on stderr (a pipe or log file sees every step)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled
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
        elif self.enabled:
            print(f"[{self.done + 1}/{self.total}] {label}", file=sys.stderr, flush=True)
        result = fn()
        self.done += 1
        if self.bar is not None:
            self.bar.advance(self.task)
        return result

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

