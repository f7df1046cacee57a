"""What every `agentalign` command shares: turning bad input into one clear line and exit 2."""

from __future__ import annotations

from typing import Any, Callable, NoReturn

import typer


def fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def checked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run fn; a ValueError (bad input, named by the library) becomes a clean CLI error."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        fail(str(e))
