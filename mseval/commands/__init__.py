"""Command functions registered on the `mseval` Typer app by `mseval.cli` (heavy imports inside each)."""
