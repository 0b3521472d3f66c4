"""Progress bars of the commands: on stderr, shown from the first update, gone from a log when the command fails."""

from __future__ import annotations

from collections.abc import Callable


class LazyProgress:
    """A rich progress bar on stderr that appears at its first update, so an input error raised
    before any work prints one line, not an empty bar; stdout stays for results."""

    def __init__(self, description: str) -> None:
        self.description, self.prog, self.task = description, None, None

    def update(self, done: int, total: int) -> None:
        if self.prog is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self.task = self.prog.add_task(self.description, total=total)
            self.prog.start()
        self.prog.update(self.task, completed=done, total=total)

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.prog is not None:
            if exc_type is not None and not self.prog.console.is_terminal:  # an error or Ctrl-C: its one line is all a log gets
                self.prog.console.quiet = True
            self.prog.stop()


def progress(description: str) -> tuple[LazyProgress, Callable[[int, int], None]]:
    """(context manager, update(done, total)) of a lazy progress bar on stderr."""
    p = LazyProgress(description)
    return p, p.update
