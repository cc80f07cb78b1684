"""The `harness` typer app: wires the command modules and maps library errors to exit codes.

Command modules expose ``register(app)``; add a module to ``COMMAND_MODULES`` to add commands.
Heavy libraries (torch, duckdb, open_clip) are imported inside command bodies, never here.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys

import typer
from rich.console import Console
from rich.markup import escape

from harness import __version__
from harness.cli.base import HarnessTyper
from harness.errors import HarnessError

COMMAND_MODULES = [
    "harness.cli.demo",
    "harness.cli.synth",
    "harness.cli.cohort",
    "harness.cli.encode",
    "harness.cli.submission",
    "harness.cli.leaderboard",
    "harness.cli.report",
    "harness.cli.evaluate",
    "harness.cli.tune",
    "harness.cli.audit",
    "harness.cli.listing",
]

app = HarnessTyper(
    name="harness",
    help="Evaluation harness for EHR + chest X-ray fusion: synth -> cohort -> encode -> evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
#: File-system errors a user can fix, with the fix (any other OSError is a bug: traceback).
_DISK_ERRORS = {
    errno.EROFS: "point HARNESS_CACHE at a writable folder",
    errno.EACCES: "check the permissions of the cache, or point HARNESS_CACHE elsewhere",
    errno.ENOSPC: "free disk space, or point HARNESS_CACHE at a larger disk",
    errno.EDQUOT: "free space within your quota, or point HARNESS_CACHE elsewhere",
}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"harness {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one clear message and exit with a non-zero code."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except HarnessError as exc:
        # not wrapped (a path in the message stays whole, ready to copy) and not read as markup
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True
        )
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        where = exc.filename or "a file"
        err_console.print(
            f"error: cannot write {where}: {exc.strerror}. Fix: {_DISK_ERRORS[exc.errno]}; "
            "files already written are complete (writes are atomic) and a re-run resumes.",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        return 2
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        return 130
    except Exception as exc:  # click usage errors and the like
        import click

        # typer ships its own copy of click's exceptions (subclasses of TyperException)
        usage = (click.exceptions.ClickException, typer.TyperException)
        if isinstance(exc, usage) and hasattr(exc, "show"):
            exc.show()
            return int(getattr(exc, "exit_code", 2))
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
