"""What every `agentalign` command shares: each expected failure becomes one line that names the
file and what to do, with exit code 2 for bad input and 1 for a failure during the work.

`main` (the `agentalign` entry point) holds the one top-level handler; `--debug` anywhere on the
command line, or AGENTALIGN_DEBUG=1, lets the traceback through instead.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, Callable, NoReturn

import typer

BAD_INPUT, FAILED = 2, 1


def fail(msg: str, code: int = BAD_INPUT) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def checked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run fn; a ValueError (bad input, named by the library) becomes a clean CLI error."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        fail(str(e))


_ADVICE = {
    errno.ENOSPC: "free some space (or choose another --out) and run the same command again: it resumes",
    errno.EDQUOT: "free some space (or choose another --out) and run the same command again: it resumes",
    errno.EACCES: "choose a folder you can write to, or fix its permissions",
    errno.EPERM: "choose a folder you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.ENOENT: "check the path",
}


def explain(e: BaseException) -> tuple[str, int]:
    """The one line and exit code for an expected failure; raises `e` again for anything else."""
    if isinstance(e, ValueError):  # bad input, named by the library (ConfigError, StoreError, ...)
        return str(e), BAD_INPUT
    if isinstance(e, OSError):
        where = e.filename or "a file"
        what = e.strerror or str(e)
        advice = _ADVICE.get(e.errno or -1, "check the file and run the same command again: finished work is kept")
        return f"{where}: {what}; {advice}", FAILED
    if type(e).__name__ == "RunFolderLocked":  # pipeline.runner's: another pipeline holds the folder
        return str(e), FAILED
    if type(e).__name__ == "SafetensorError":  # a damaged checkpoint (safetensors' own error type)
        return f"a damaged checkpoint ({e}); delete the stage's folder or rerun it with --from STAGE", FAILED
    raise e


def main(argv: list[str] | None = None) -> None:
    """The `agentalign` command: the typer app under the one top-level handler."""
    from agentalign.cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("AGENTALIGN_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        app(args, prog_name="agentalign")
    except KeyboardInterrupt:
        typer.secho("interrupted; run the same command again to resume", err=True)
        raise SystemExit(130) from None
    except Exception as e:
        if debug:
            raise
        msg, code = explain(e)
        typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        raise SystemExit(code) from None
