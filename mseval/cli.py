"""The `mseval` command line: registers the commands of `mseval/commands/` (one module per command
or group) and the `forecast` sub-app, and holds the one error path (`run_typer`).

Bad input raises `InputError` anywhere below; `run_typer` turns it into one line on stderr and exit
code 2, a usage error into the usage line plus one line (exit 2), Ctrl-C into one line (exit 130);
never a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

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
from mseval.commands.bids import export_app, import_app  # noqa: E402
from mseval.commands.count import count  # noqa: E402 - light modules: heavy imports run inside each command
from mseval.commands.effects import effects, nbreg  # noqa: E402
from mseval.commands.evaluate import evaluate  # noqa: E402
from mseval.commands.lesions import lesions, net2  # noqa: E402
from mseval.commands.match import match  # noqa: E402
from mseval.commands.report import demo, report  # noqa: E402
from mseval.commands.simulate import simulate, simulate_forecasts_cmd  # noqa: E402
from mseval.commands.validate import validate  # noqa: E402
from mseval.commands.visit_counts import visit_counts  # noqa: E402

app.command()(simulate)
app.command("simulate-forecasts")(simulate_forecasts_cmd)
app.command()(validate)
app.command()(count)
app.command("visit-counts")(visit_counts)
app.command()(lesions)
app.command()(net2)
app.command()(nbreg)
app.command()(effects)
app.command("match", help="Lesion-wise detection metrics of a predicted mask against a reference (presets or explicit rule).")(match)
app.command()(evaluate)
app.command(help="Write a self-contained trial report (HTML, Markdown, figures, tables, summary.json).")(report)
app.command(help="Run the whole pipeline on a small synthetic six-arm trial and write its report.")(demo)
app.add_typer(export_app, name="export", help="Write a cohort in another format: `mseval export bids COHORT OUT`.")
app.add_typer(import_app, name="import", help="Read another format into a cohort: `mseval import bids BIDS_ROOT --out COHORT`.")

from mseval.commands.forecast import app as forecast_app  # noqa: E402 - torch is imported inside its commands only

app.add_typer(forecast_app, name="forecast", help="Train the treatment-conditioned diffusion model, sample forecast ensembles, evaluate checkpoints.")


def _click_exceptions():  # noqa: ANN202 - the exceptions module of the click that typer actually runs
    """typer >= 0.2x vendors click as `typer._click`; older typer uses the `click` package."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - typer < 0.20
        from click import exceptions
    return exceptions


INTERRUPTED = "interrupted; rerun the same command to resume"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_typer(typer_app: typer.Typer, argv: list[str] | None, prog_name: str) -> int:
    """Run a Typer app with mseval's one error path; returns the exit code.

    - usage errors (unknown command or option, missing or malformed value): the usage line and one
      error line on stderr, exit code 2;
    - `InputError` (bad data or options found by mseval): one line, exit code 2;
    - an unwritable or misplaced output (`PermissionError`, `IsADirectoryError`, ...): one line naming
      the path, exit code 2;
    - Ctrl-C (SIGINT): one line, exit code 130; finished blocks stay, so a rerun resumes.

    Every message line starts "mseval: " (also for a sub-app run on its own); `prog_name` names the
    command in the usage line.
    """
    tool = "mseval"
    ce = _click_exceptions()
    import typer.exceptions as te

    aborts = tuple({t for t in (getattr(ce, "Abort", None), getattr(te, "Abort", None)) if t is not None}) + (KeyboardInterrupt,)
    exits = tuple({t for t in (getattr(ce, "Exit", None), getattr(te, "Exit", None), typer.Exit) if t is not None})
    command = typer.main.get_command(typer_app)
    try:
        code = command.main(args=argv if argv is not None else sys.argv[1:], prog_name=prog_name, standalone_mode=False)
    except InputError as exc:
        typer.echo(f"{tool}: error: {exc.message}", err=True)
        return 2
    except ce.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `mseval` alone: the help was printed, nothing failed
            return 0
        usage = exc.ctx.get_usage() if exc.ctx is not None else f"Usage: {prog_name} [OPTIONS] COMMAND [ARGS]..."
        typer.echo(_one_line(usage) + f"  (try '{exc.ctx.command_path if exc.ctx else prog_name} --help')", err=True)
        typer.echo(f"{tool}: error: {_one_line(exc.format_message())}", err=True)
        return 2
    except ce.ClickException as exc:  # e.g. FileError from a click.File parameter
        typer.echo(f"{tool}: error: {_one_line(exc.format_message())}", err=True)
        return exc.exit_code or 1
    except aborts:  # older typer/click raise these; typer 0.2x returns 130 (below)
        code = 130
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        where = exc.filename or ""
        typer.echo(f"{tool}: error: {where}: {exc.strerror or exc}".replace(": : ", ": "), err=True)
        return 2
    except OSError as exc:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
            typer.echo(f"{tool}: error: {exc.filename or ''}: {exc.strerror}", err=True)
            return 2
        raise
    except exits as exc:
        code = exc.exit_code
    if code == 130:  # typer turns KeyboardInterrupt into exit code 130
        typer.echo(f"{tool}: {INTERRUPTED}", err=True)
        return 130
    return int(code) if isinstance(code, int) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mseval` console script."""
    return run_typer(app, argv, "mseval")


def run() -> None:
    """Console-script wrapper: exit with `main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
