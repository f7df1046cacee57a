"""`agentalign pretrain` and `agentalign sft`: behaviour cloning from the command line.

    agentalign pretrain --data runs/pretrain-data --out runs/base [--config bc.toml] [--set lr=1e-4 ...]
    agentalign sft --data runs/curated --out runs/sft --init runs/base [--set steps=800]
    agentalign sft --data runs/curated --out runs/scratch --scratch

The BC settings are built in layers: the preset (`--preset`, default pretrain / sft / scratch), the
TOML file, then each `--set key=value`. A fresh model (pretrain, sft --scratch) is the `--model`
preset adjusted by the file's `[model]` table and `--set model.KEY=...`; with `--init` the model
is the checkpoint's. Every key and value is checked before any work starts. Mount with
`register(app)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agentalign.cli.common import checked, fail

_SET_HELP = "Override a config key, e.g. --set lr=1e-4 --set model.dropout=0.1 (repeatable)."
_MODEL_HELP = "Model preset: cpu | tiny | 4m | 25m | paper-103m (default: cpu; tiny with --preset smoke)."


def _configs(preset: str, config: Optional[Path], overrides: list[str], model: Optional[str], fresh: bool):
    """(BCConfig, PolicyConfig of a fresh model or None) from the preset, the file and the overrides."""
    from dataclasses import replace

    from agentalign.config import build_config, load_toml
    from agentalign.models.config import PolicyConfig, model_preset
    from agentalign.train.bc import BCConfig, bc_preset

    table = load_toml(config) if config is not None else {}
    model_table = table.pop("model", {})
    if not isinstance(model_table, dict):
        raise ValueError(f"{config}: model must be a table of model settings ([model]), got {model_table!r}")
    model_sets = [o.strip()[len("model."):] for o in overrides if o.strip().startswith("model.")]
    bc_sets = [o for o in overrides if not o.strip().startswith("model.")]
    base = bc_preset(preset)
    if not fresh:
        if model_table or model_sets:
            raise ValueError("model: with --init the model is the checkpoint's; model keys apply to a fresh model")
        return build_config(BCConfig, table, bc_sets, base=base), None
    m = model_preset(model or ("tiny" if preset == "smoke" else "cpu"))
    # A model whose context is shorter than the preset's window: shorten the window with it rather than fail.
    base = replace(base, window=min(base.window, m.context))
    m = build_config(PolicyConfig, model_table, model_sets, base=m, prefix="model.")
    return build_config(BCConfig, table, bc_sets, base=base), m


def _run(preset: str, data: Path, out: Path, config: Optional[Path], overrides: list[str], model: Optional[str],
         init: Optional[Path], progress: bool) -> None:  # fmt: skip
    from agentalign.train.bc import train_bc

    cfg, fresh_model = checked(_configs, preset, config, overrides, model, fresh=init is None)
    summary = checked(train_bc, cfg, data, out, model=fresh_model, init=init, stage=preset, progress=progress)
    loss, acc = summary.get("final_loss"), summary.get("final_accuracy")
    loss_s = f"{loss:.4f}" if loss is not None else "n/a"
    acc_s = f"{acc:.3f}" if acc is not None else "n/a"
    if summary.get("already_finished"):
        typer.echo(f"{out}: already finished ({summary['stage']}, {summary['steps']} steps): final loss {loss_s}, "
                   f"accuracy {acc_s}, trained in {summary['seconds']:.1f} s")  # fmt: skip
        return
    resumed = f", resumed from step {summary['resumed_from']}" if summary["resumed_from"] else ""
    typer.echo(f"{out}: {summary['stage']} {summary['steps']} steps{resumed}: final loss {loss_s}, accuracy {acc_s}, "
               f"{summary['seconds']:.1f} s ({summary['frames_per_s']:.0f} frames/s)")  # fmt: skip


def pretrain(
    data: Path = typer.Option(..., "--data", help="Episode store to imitate (agentalign data generate)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint, metrics, run config. Re-run to resume."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of BCConfig keys (and a [model] table)."),
    overrides: list[str] = typer.Option([], "--set", help=_SET_HELP),
    preset: str = typer.Option("pretrain", help="pretrain | sft | scratch | preference | smoke"),
    model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Imitation pre-training on a large, unfiltered gameplay set (paper §3.2)."""
    _run(preset, data, out, config, overrides, model, None, progress)


def sft(
    data: Path = typer.Option(..., "--data", help="Curated demonstrations (agentalign data generate --preset finetune)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint, metrics, run config. Re-run to resume."),
    init: Optional[Path] = typer.Option(None, "--init", help="Pre-trained checkpoint folder to fine-tune."),
    scratch: bool = typer.Option(False, "--scratch", help="Train from scratch instead (the paper's figure 5 baseline)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of BCConfig keys (and a [model] table with --scratch)."),
    overrides: list[str] = typer.Option([], "--set", help=_SET_HELP),
    preset: Optional[str] = typer.Option(None, help="Default: sft with --init, scratch with --scratch."),
    model: Optional[str] = typer.Option(None, help="With --scratch: " + _MODEL_HELP + " With --init: the checkpoint's."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Supervised fine-tuning on curated demonstrations (paper §3.3), or the from-scratch baseline."""
    if (init is None) == (not scratch):
        fail("give exactly one of --init PRETRAINED_DIR or --scratch")
    if init is not None and model is not None:
        fail("--model applies to --scratch only; with --init the model is the checkpoint's")
    _run(preset or ("sft" if init is not None else "scratch"), data, out, config, overrides, model, init, progress)


def register(app: typer.Typer) -> None:
    """Add `pretrain` and `sft` to the agentalign app."""
    app.command("pretrain")(pretrain)
    app.command("sft")(sft)
