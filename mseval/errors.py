"""The one exception type for bad input, turned by the CLI into one line and exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: names the file, and where known the row and field, and what is wrong.

    Rows are 1-based data rows (the header is not counted), as a person counts them in a spreadsheet.
    """

    def __init__(
        self,
        file: str | Path | None,
        problem: str,
        *,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.problem = problem
        self.row = row
        self.field = field
        super().__init__(self.message)

    def __reduce__(self) -> tuple:
        """Picklable with its keywords, so an error raised in a worker process reaches the CLI intact."""
        return (_rebuild, (type(self), self.file, self.problem, self.row, self.field))

    @property
    def message(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        location = f" ({', '.join(where)})" if where else ""
        prefix = f"{self.file}{location}: " if self.file else (f"{', '.join(where)}: " if where else "")
        return f"{prefix}{self.problem}".replace("\n", " ")


def _rebuild(cls: type, file: str | None, problem: str, row: int | None, field: str | None) -> InputError:
    return cls(file, problem, row=row, field=field)


def row_hint(file: str | Path | None, row: int) -> str:
    """The words that say how `row` is counted, for the end of a message: for a CSV file
    " (row N counts data rows from 1, header excluded: line N+1 of the file)", else ""."""
    if file is None or not str(file).lower().endswith(".csv"):
        return ""
    return f" (row {row} counts data rows from 1, header excluded: line {row + 1} of the file)"


class SimulationError(InputError):
    """The simulator was asked for something it cannot honour (e.g. more lesions than the volume holds)."""
