"""`agentalign pretrain` and `agentalign sft`: behaviour cloning from the command line.

    agentalign pretrain --data runs/pretrain-data --out runs/base [--config bc.toml] [--set lr=1e-4 ...]
    agentalign sft --data runs/curated --out runs/sft --init runs/base [--set steps=800]
    agentalign sft --data runs/curated --out runs/scratch --scratch

The config is built in layers: the preset (`--preset`, default pretrain / sft / scratch), the
model preset (`--model`), the init checkpoint's model config (sft --init), the TOML file, then
each `--set key=value`. Every key and value is checked before any work starts. Mount with
`register(app)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agentalign.cli.common import fail

_SET_HELP = "Override a config key, e.g. --set lr=1e-4 --set model.dropout=0.1 (repeatable)."


def _checked(fn, *args, **kwargs):
    """Run fn, turning ValueError (bad input, ConfigError included) into a clean CLI error."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        fail(str(e))


def _build_config(preset: str, data: Path, config: Optional[Path], overrides: list[str], model: Optional[str],
                  init: Optional[Path] = None):  # fmt: skip
    from dataclasses import replace

    from agentalign.config import build_config, load_toml
    from agentalign.models.config import model_preset
    from agentalign.train.bc import bc_preset

    base = bc_preset(preset)
    if model is not None:
        m = model_preset(model)
        # A smaller context than the preset's window: shorten the window with it rather than fail.
        base = replace(base, model=m, window=min(base.window, m.context))
    if init is not None:
        base = base.with_init(init)
    table = load_toml(config) if config is not None else {}
    for key in ("data", "init"):  # given on the command line, where they are checked
        if key in table:
            raise ValueError(f"{config}: set {key} with --{key} on the command line, not in the config file")
    cfg = build_config(type(base), table, overrides, base=base)
    return replace(cfg, data=str(data))


def _run(cfg, out: Path, progress: bool) -> None:
    from agentalign.train.bc import train_bc

    summary = _checked(train_bc, cfg, out, progress)
    loss, acc = summary.get("final_loss"), summary.get("final_accuracy")
    loss_s = f"{loss:.4f}" if loss is not None else "n/a"
    acc_s = f"{acc:.3f}" if acc is not None else "n/a"
    if summary.get("already_finished"):
        typer.echo(f"{out}: already finished ({cfg.stage}, {summary['steps']} steps): final loss {loss_s}, "
                   f"accuracy {acc_s}, trained in {summary['seconds']:.1f} s")  # fmt: skip
        return
    resumed = f", resumed from step {summary['resumed_from']}" if summary["resumed_from"] else ""
    typer.echo(f"{out}: {cfg.stage} {summary['steps']} steps{resumed}: final loss {loss_s}, accuracy {acc_s}, "
               f"{summary['seconds']:.1f} s ({summary['frames_per_s']:.0f} frames/s)")  # fmt: skip


def pretrain(
    data: Path = typer.Option(..., "--data", help="Episode store to imitate (agentalign data generate)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint, metrics, run config. Re-run to resume."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of BCConfig keys."),
    overrides: list[str] = typer.Option([], "--set", help=_SET_HELP),
    preset: str = typer.Option("pretrain", help="pretrain | sft | scratch | preference | smoke"),
    model: Optional[str] = typer.Option(None, help="Model preset: cpu | tiny | 4m | 25m | paper-103m (default: the preset's)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Imitation pre-training on a large, unfiltered gameplay set (paper §3.2)."""
    cfg = _checked(_build_config, preset, data, config, overrides, model)
    _run(cfg, out, progress)


def sft(
    data: Path = typer.Option(..., "--data", help="Curated demonstrations (agentalign data generate --preset finetune)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint, metrics, run config. Re-run to resume."),
    init: Optional[Path] = typer.Option(None, "--init", help="Pre-trained checkpoint folder to fine-tune."),
    scratch: bool = typer.Option(False, "--scratch", help="Train from scratch instead (the paper's figure 5 baseline)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of BCConfig keys."),
    overrides: list[str] = typer.Option([], "--set", help=_SET_HELP),
    preset: Optional[str] = typer.Option(None, help="Default: sft with --init, scratch with --scratch."),
    model: Optional[str] = typer.Option(None, help="Model preset with --scratch (with --init the checkpoint's)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Supervised fine-tuning on curated demonstrations (paper §3.3), or the from-scratch baseline."""
    if (init is None) == (not scratch):
        fail("give exactly one of --init PRETRAINED_DIR or --scratch")
    if init is not None and model is not None:
        fail("--model applies to --scratch only; with --init the model is the checkpoint's")
    name = preset or ("sft" if init is not None else "scratch")
    cfg = _checked(_build_config, name, data, config, overrides, model, init)
    if init is None and cfg.init is not None:
        fail("--scratch trains from scratch, but the config sets init; drop one")
    _run(cfg, out, progress)


def register(app: typer.Typer) -> None:
    """Add `pretrain` and `sft` to the agentalign app."""
    app.command("pretrain")(pretrain)
    app.command("sft")(sft)
