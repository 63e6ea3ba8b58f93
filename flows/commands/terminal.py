"""What `master` shows on stderr while it works: log lines (ours at INFO, every library's
with -v), and a run's progress, as a live bar on a terminal or a line at most every
PROGRESS_EVERY_S off one (flows/runs/progress.py holds the figures)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.runs.progress import Progress

PROGRESS_EVERY_S = 10.0  # off a terminal, a progress line at most this often


class _Stderr:
    """sys.stderr as it is when a line is written: while the live bar runs, rich stands in
    for it and prints log lines above the bar instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(verbose: bool) -> None:
    """Warnings, and our own INFO lines (the stages); with -v every library's INFO lines and
    our DEBUG ones (a line per dialogue) too."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=_Stderr(),  # type: ignore[arg-type]
    )
    logging.getLogger("master").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("LiteLLM", "litellm", "httpx", "httpcore", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress_line(progress: Progress) -> None:
    print(f"{time.strftime('%H:%M:%S')} {progress.line()}", file=sys.stderr, flush=True)


class ProgressBar:
    """Progress on a terminal: one live bar (rich, which comes with Prefect) with every figure
    of the progress line, redrawn a few times a second so the ETA keeps moving."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> Any:
        from rich.progress_bar import ProgressBar as Bar
        from rich.table import Table

        f = self.progress.figures()
        grid = Table.grid(padding=(0, 1))
        total, done = f.total, f.done
        if not total and f.steps:  # before any seed is simulated, the latest step's own bar
            _, done, total = f.steps[-1]
        text = f.line() if f.total or f.steps else "loading and planning"
        grid.add_row(Bar(total=total or None, completed=done, width=30), text)
        return grid


@contextlib.contextmanager
def showing(progress: Progress, terminal: bool, console: Any = None) -> Iterator[None]:
    """Show a run's progress while the body runs: the live bar on a terminal (on `console`,
    stderr by default), progress lines otherwise."""
    if terminal:
        from rich.console import Console
        from rich.live import Live

        live = Live(
            ProgressBar(progress),
            console=console or Console(stderr=True),
            refresh_per_second=4,
            # stdout is left alone (it may be piped away from the terminal); the summary
            # is printed on it once the bar is done
            redirect_stdout=False,
        )
        with live:
            try:
                yield
            finally:  # the last figures stay on screen; a run that simulated nothing leaves none
                live.transient = not progress.total
        return
    from flows.runs.progress import ProgressLines

    lines = ProgressLines(progress_line, PROGRESS_EVERY_S)
    progress.watch = lines
    try:
        yield
    finally:
        if progress.total:
            lines.write(progress)
