"""Progress on stderr for long commands: a bar redrawn in place on a terminal, else one line per step.

    progress = Progress(total=120, what="photos")
    progress.step("ada/01.jpg")      # before each item
    progress.close()                 # ends the bar's line
"""
from __future__ import annotations

import sys
from typing import Optional, TextIO

BAR_WIDTH = 24


class Progress:
    """``step`` before each of ``total`` items; silent when ``enabled`` is false."""

    def __init__(self, total: int, what: str = "items", *, enabled: bool = True,
                 stream: Optional[TextIO] = None):
        self.total, self.what, self.enabled, self.done = total, what, enabled, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.tty:
            filled = BAR_WIDTH * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} {self.what} {label[-40:]:<40}")
        else:
            self.stream.write(f"[{self.done}/{self.total}] {label}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.done:
            self.stream.write("\n")
            self.stream.flush()
