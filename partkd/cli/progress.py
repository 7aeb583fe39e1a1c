"""The one progress printer of the commands: a status line on stderr."""

from __future__ import annotations

import sys
import time


class ProgressPrinter:
    """``(done, total)`` callback: one status line, rewritten in place on a terminal; every 5% as a line in a log.

    Inputs under ``min_total`` items print nothing (they are over before a line would help).
    """

    def __init__(self, label: str, min_total: int = 200, unit: str = "", stream=None):
        self.label, self.min_total, self.unit = label, min_total, f" {unit}" if unit else ""
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if total and total < self.min_total:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        line = f"{self.label}: {done}/{total or '?'}{self.unit} ({rate:,.0f}/s)"
        if self.stream.isatty():
            print(line, end="\n" if done == total else "\r", file=self.stream, flush=True)
        elif (done * 20 // total != (done - 1) * 20 // total) if total else done % 1000 == 0:
            print(line, file=self.stream, flush=True)


def say(line: str) -> None:
    """A progress line of a long command, on stdout at once (a log follows it live)."""
    print(line, flush=True)
