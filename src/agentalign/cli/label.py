"""`agentalign label ...`: people label preferences in a local web app (docs/labeling.md).

    agentalign label add-labeller runs/people alice      # prints alice's token and the URL to open
    agentalign label serve runs/people [--host 127.0.0.1 --port 8000 --store PATH --selection random|active --train N]
    agentalign label stats runs/people                   # labels, agreement between labellers, labels per hour
    agentalign label export runs/people [--out runs/people/prefs/prefs.jsonl]

Thin: each command parses and calls `agentalign.labeling` (bad input: one line, exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agentalign.cli.common import checked, fail

label_app = typer.Typer(help="People label preferences in a local web app (docs/labeling.md).", no_args_is_help=True)

_RUN_HELP = "Run folder (its rollouts stage's store holds the trajectories; labels go in RUN/labels)."


def _run(run: Path) -> Path:
    if not run.is_dir():
        fail(f"run folder {run} does not exist")
    return run


@label_app.command("serve")
def serve_command(
    run: Path = typer.Argument(..., help=_RUN_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    store: Optional[Path] = typer.Option(None, help="Trajectory store (default RUN/rollouts/store)."),
    selection: str = typer.Option("random", help="Which pairs to ask: random, or active (ensemble disagreement)."),
    train: Optional[int] = typer.Option(None, help="Training pool: the store's first N episodes "
                                                   "(default RUN/pipeline.json's prefs.train)."),  # fmt: skip
    seed: int = typer.Option(0, help="Seed of the question draws."),
) -> None:
    """Serve the labelling page and its JSON API until interrupted (Ctrl-C)."""
    from agentalign.labeling.selection import SELECTIONS
    from agentalign.labeling.server import serve

    _run(run)
    if not 1 <= port <= 65535:
        fail(f"--port must lie in 1..65535, got {port}")
    if selection not in SELECTIONS:
        fail(f"--selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    checked(serve, run, host=host, port=port, store=store, selection=selection, seed=seed, train=train, log=typer.echo)


@label_app.command("add-labeller")
def add_labeller_command(
    run: Path = typer.Argument(..., help=_RUN_HELP),
    name: str = typer.Argument(..., help="The labeller's name (recorded with each of their labels)."),
    host: str = typer.Option("127.0.0.1", help="Host of the URL printed (where `label serve` listens)."),
    port: int = typer.Option(8000, help="Port of the URL printed."),
) -> None:
    """Add a labeller; prints their token and the URL that opens the page as them."""
    from agentalign.labeling.db import LabelDB

    _run(run)
    with LabelDB(run) as db:
        token = checked(db.add_labeller, name)
    typer.echo(f"labeller {name.strip()}: token {token}")
    typer.echo(f"open http://{host}:{port}/?token={token}  (while `agentalign label serve {run}` runs)")


@label_app.command("stats")
def stats_command(run: Path = typer.Argument(..., help=_RUN_HELP)) -> None:
    """Labels per labeller, labels per hour, skips, and agreement between labellers."""
    from agentalign.labeling.export import stats

    s = checked(stats, _run(run))

    def num(x, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    typer.echo(f"{s['labels']} labels, {s['skipped']} skipped, {len(s['labellers'])} labellers")
    for name, v in s["labellers"].items():
        typer.echo(f"  {name}: {v['labels']} labels, {v['skipped']} skipped, {num(v['mean_seconds'], '.1f')} s each, "
                   f"{num(v['per_hour'], '.0f')} per hour labelling ({num(v['per_hour_wall'], '.0f')} per hour "
                   f"from first to last)")  # fmt: skip
    if s["agreement"] is None:
        typer.echo("agreement: no two labellers compared the same episodes yet")
    else:
        typer.echo(f"agreement: {100 * s['agreement']:.1f}% over {s['agreement_pairs']} pairs of verdicts "
                   f"({s['shared_comparisons']} episode pairs compared by two or more)")  # fmt: skip


@label_app.command("export")
def export_command(
    run: Path = typer.Argument(..., help=_RUN_HELP),
    out: Optional[Path] = typer.Option(None, help="Preference file to write (default RUN/prefs/prefs.jsonl)."),
    store: Optional[Path] = typer.Option(None, help="Trajectory store (default the one the labels were served from)."),
) -> None:
    """Write the labels as the project's preference file (skips left out), for `reward train`."""
    from agentalign.labeling.export import export_labels

    _run(run)
    out = out or run / "prefs" / "prefs.jsonl"
    r = checked(export_labels, run, out, store=store)
    typer.echo(f"wrote {out}: {r['labels']} labels from {r['labellers']} labellers "
               f"({r['train_comparisons']} training / {r['test_comparisons']} held-out comparisons; "
               f"{r['skipped']} skipped, not exported)")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.add_typer(label_app, name="label")
