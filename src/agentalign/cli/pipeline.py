"""`agentalign pipeline` (the whole method, resumable) and `agentalign config keys`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agentalign.cli.common import checked

config_app = typer.Typer(help="The pipeline's configuration.", no_args_is_help=True)


def pipeline(
    config: str = typer.Option("cpu", help="Preset (cpu | cpu-wide | smoke | paper; configs/NAME.toml) or a TOML file."),
    target: Optional[str] = typer.Option(None, help="Target pad: left | middle | right (default: the preset's)."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default: runs/<preset>)."),
    from_: Optional[str] = typer.Option(None, "--from", help="Rerun from this stage on."),
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage (e.g. prefs, to label by hand)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set align.episodes=1600."),
    reproduce: bool = typer.Option(False, "--reproduce", help="Add every variant the paper's figures need (both "
                                   "pads, several seeds, with and without preference FT, small and large "
                                   "comparison sets, model sizes): hours on 2 cores. Same as --set reproduce.enabled=true."),
) -> None:
    """Every stage, from nothing to an aligned agent and report.html. Resumable: run it again."""
    from agentalign.pipeline import load_pipeline_config, run_pipeline

    overrides = list(set_) + ([f"target={target}"] if target else []) + (["reproduce.enabled=true"] if reproduce else [])
    cfg = checked(load_pipeline_config, config, overrides)
    folder = out or Path("runs") / Path(config).stem
    extra = ", with the reproduce variants" if cfg.reproduce.enabled else ""
    typer.echo(f"agentalign pipeline: preset {config}, target {cfg.target}{extra}, run folder {folder}")
    checked(run_pipeline, folder, cfg, from_, echo=lambda line: typer.echo(line), until=until)


@config_app.command("keys")
def config_keys(
    config: str = typer.Option("cpu", help="Preset (cpu | cpu-wide | smoke | paper) or a TOML file whose values to show."),
    set_: list[str] = typer.Option([], "--set", help="Overrides to apply before listing, key=value."),
) -> None:
    """Every key the pipeline accepts (in a preset's TOML or with --set), its type and its value."""
    from agentalign.config import config_keys as keys
    from agentalign.pipeline import load_pipeline_config

    cfg = checked(load_pipeline_config, config, list(set_))
    rows = keys(cfg)
    width = max(len(k) for k, _, _ in rows)
    for key, tp, value in rows:
        typer.echo(f"{key:<{width}}  {tp:<28}  {value!r}")
    typer.echo(f"{len(rows)} keys (and model_preset, which picks the model preset the [model] keys adjust)")
