"""The `mseval` command line. Thin: parse, validate, call, print.

Bad input raises `InputError` anywhere below; `main` turns it into one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import click
import typer

from mseval import __version__
from mseval.errors import InputError

app = typer.Typer(
    name="mseval",
    help="Forecast MS NET2 lesion masks and turn the forecasts into trial-grade statistics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mseval {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """mseval: forecast NET2 lesion masks and analyse them like a trial."""


# Every command lives in mseval/commands/ (one module per command or group); this module only registers them.
from mseval.commands.count import count  # noqa: E402 - light modules: heavy imports run inside each command
from mseval.commands.effects import effects, nbreg  # noqa: E402
from mseval.commands.evaluate import evaluate  # noqa: E402
from mseval.commands.lesions import lesions, net2  # noqa: E402
from mseval.commands.match import match  # noqa: E402
from mseval.commands.report import demo, report  # noqa: E402
from mseval.commands.simulate import simulate, simulate_forecasts_cmd  # noqa: E402
from mseval.commands.validate import validate  # noqa: E402

app.command()(simulate)
app.command("simulate-forecasts")(simulate_forecasts_cmd)
app.command()(validate)
app.command()(count)
app.command()(lesions)
app.command()(net2)
app.command()(nbreg)
app.command()(effects)
app.command("match", help="Lesion-wise detection metrics of a predicted mask against a reference (presets or explicit rule).")(match)
app.command()(evaluate)
app.command(help="Write a self-contained trial report (HTML, Markdown, figures, tables, summary.json).")(report)
app.command(help="Run the whole pipeline on a small synthetic six-arm trial and write its report.")(demo)

from forecast.cli import app as forecast_app  # noqa: E402 - torch is imported inside its commands only

app.add_typer(forecast_app, name="forecast", help="Train the treatment-conditioned diffusion model, sample forecast ensembles, evaluate checkpoints.")


def run_typer(typer_app: typer.Typer, argv: list[str] | None, prog_name: str) -> int:
    """Run a Typer app with mseval's error handling: InputError -> one stderr line, exit code 2."""
    command = typer.main.get_command(typer_app)
    try:
        command.main(args=argv if argv is not None else sys.argv[1:], prog_name=prog_name, standalone_mode=False)
    except InputError as exc:
        typer.echo(f"mseval: error: {exc.message}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("Interrupted.", err=True)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mseval` console script."""
    return run_typer(app, argv, "mseval")


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script wrapper: exit with `main`'s code."""
    sys.exit(main())
