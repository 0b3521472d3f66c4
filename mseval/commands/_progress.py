"""Progress bars of the commands: on stderr, shown from the first update, gone from a log when the command fails."""

from __future__ import annotations

from collections.abc import Callable


class LazyProgress:
    """A rich progress bar on stderr that appears at its first update, so an input error raised
    before any work prints one line, not an empty bar; stdout stays for results. With `loss`, a
    column shows the last value passed to `update` (training)."""

    def __init__(self, description: str, *, loss: bool = False) -> None:
        self.description, self.loss, self.prog, self.task = description, loss, None, None

    def update(self, done: int, total: int, value: float | None = None) -> None:
        if self.prog is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
            if self.loss:
                cols.append(TextColumn("loss {task.fields[loss]:.4f}"))
            cols += [TimeElapsedColumn(), TimeRemainingColumn()]
            self.prog = Progress(*cols, console=Console(stderr=True), transient=False)
            self.task = self.prog.add_task(self.description, total=total, loss=float("nan"))
            self.prog.start()
        fields = {"loss": value} if value is not None else {}
        self.prog.update(self.task, completed=done, total=total, **fields)

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.prog is not None:
            if exc_type is not None and not self.prog.console.is_terminal:  # an error or Ctrl-C: its one line is all a log gets
                self.prog.console.quiet = True
            self.prog.stop()


def progress(description: str, *, loss: bool = False) -> tuple[LazyProgress, Callable[..., None]]:
    """(context manager, update(done, total[, loss])) of a lazy progress bar on stderr."""
    p = LazyProgress(description, loss=loss)
    return p, p.update
