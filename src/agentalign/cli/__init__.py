"""The `agentalign` command line. Thin: it parses, checks, and calls library functions."""

from __future__ import annotations

import os

# torch's OpenMP threads spin at barriers; beside numba's pool (a second OpenMP runtime) or another
# busy process on a 2-core machine that made rollouts 10x slower. Passive waiting costs nothing
# measurable alone (benchmarks/rollout_throughput.py). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
from pathlib import Path
from typing import Optional

import typer

from agentalign.cli.common import checked

app = typer.Typer(help="Train game agents the way LLMs are trained.", no_args_is_help=True,
                  pretty_exceptions_enable=False)  # fmt: skip
env_app = typer.Typer(help="Look at the built-in SkyGarden island.", no_args_is_help=True)
app.add_typer(env_app, name="env")

from agentalign.cli.data import data_app  # noqa: E402

app.add_typer(data_app, name="data")

from agentalign.cli import align as cli_align, eval as cli_eval, reward as cli_reward, train as cli_train  # noqa: E402

cli_train.register(app)  # pretrain, sft
cli_eval.register(app)  # eval, rollout
cli_reward.register(app)  # prefs, reward
cli_align.register(app)  # pft, align, dpo


_PADS_CYCLE = ("left", "middle", "right", "middle")


@env_app.command("video")
def env_video(
    out: Path = typer.Option(Path("out/skygarden.mp4"), help="Output .mp4 or .gif."),
    pad: Optional[str] = typer.Option(None, help="Target pad for every player (default: a mix)."),
    character: str = typer.Option("ninja", help="Character of every player."),
    players: int = typer.Option(4, min=1, max=8, help="Players side by side, one per spawn in turn."),
    size: int = typer.Option(64, help="Observation size in pixels (square)."),
    seed: int = typer.Option(0),
    noise: float = typer.Option(0.25, help="Steering noise of the scripted players (rad)."),
) -> None:
    """A clip of scripted players driving to the pads, beside a top-down map of their paths."""
    from agentalign.envs import viz
    from agentalign.players.navigator import NavigatorParams
    from agentalign.players.scripted import run_navigators

    targets = [pad or _PADS_CYCLE[i % 4] for i in range(players)]
    params = NavigatorParams(steer_noise=noise, look_around_prob=0.03, dash_prob=0.05, button_prob=0.05)
    eps = checked(run_navigators, targets, spawns=[i % 4 for i in range(players)], characters=[character] * players,
                   seed=seed, params=params, width=size, height=size)  # fmt: skip
    frames = viz.episode_panels([e.frames for e in eps], [e.pos for e in eps], [e.jump_pad for e in eps],
                                view_scale=max(1, 256 // size))  # fmt: skip
    path = checked(viz.write_video, out, frames)
    typer.echo(f"wrote {path} ({len(frames)} frames): " + ", ".join(f"{e.target}->{e.jump_pad}" for e in eps))


@env_app.command("sheet")
def env_sheet(
    out: Path = typer.Option(Path("out/skygarden_sheet.png"), help="Output PNG."),
    size: int = typer.Option(64, help="Observation size in pixels (square)."),
    seed: int = typer.Option(0),
    columns: int = typer.Option(6, min=2, help="Frames per spawn, spread over the episode."),
) -> None:
    """A contact sheet: a row of frames along an episode from every spawn, then every character."""
    import imageio.v3 as iio
    import numpy as np

    from agentalign.envs import viz
    from agentalign.envs.skygarden import world as W
    from agentalign.players.navigator import NavigatorParams
    from agentalign.players.scripted import run_navigators

    eps = checked(run_navigators, list(_PADS_CYCLE), spawns=[0, 1, 2, 3], seed=seed,
                   params=NavigatorParams(steer_noise=0.1), width=size, height=size)  # fmt: skip
    frames = []
    for e in eps:
        idx = np.linspace(0, len(e.frames) - 1, columns).round().astype(int)
        frames += [e.frames[i] for i in idx]
    # Every character, a few steps into an episode from the same spawn.
    chars = list(W.CHARACTER_NAMES)
    roster = run_navigators(["middle"] * len(chars), spawns=[1] * len(chars), characters=chars, seed=seed,
                            width=size, height=size, max_steps=6)  # fmt: skip
    frames += [e.frames[-1] for e in roster]
    sheet = viz.contact_sheet(frames, columns, scale=max(1, 128 // size))
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, sheet)
    typer.echo(f"wrote {out}: rows = spawns 1-4 towards " + ", ".join(_PADS_CYCLE) + f"; then {', '.join(chars)}")


@env_app.command("map")
def env_map(
    out: Path = typer.Option(Path("out/skygarden_map.png"), help="Output PNG."),
    scale: int = typer.Option(12, min=1, help="Pixels per map cell."),
    seed: int = typer.Option(0),
    episodes: int = typer.Option(12, min=0, help="Scripted episodes whose paths are drawn (0: the bare map)."),
) -> None:
    """The island from above: spawns, pads, walls, and the paths of a few scripted players."""
    import imageio.v3 as iio

    from agentalign.envs.skygarden import topdown
    from agentalign.players.navigator import NavigatorParams
    from agentalign.players.scripted import run_navigators

    img = topdown.map_image(scale)
    if episodes:
        eps = run_navigators([("left", "middle", "right")[i % 3] for i in range(episodes)], seed=seed,
                             params=NavigatorParams(steer_noise=0.3))  # fmt: skip
        img = topdown.draw_paths(img, [e.pos for e in eps], [topdown.PAD_MARK_COLOURS[e.target] for e in eps], scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, img)
    typer.echo(f"wrote {out}")


@env_app.command("demo")
def env_demo(
    out: Path = typer.Option(Path("out"), help="Output folder."),
    seed: int = typer.Option(0),
) -> None:
    """The island at a glance: a clip, a contact sheet and a map of scripted players."""
    env_video(out=out / "skygarden.mp4", pad=None, character="ninja", players=4, size=64, seed=seed, noise=0.25)
    env_sheet(out=out / "skygarden_sheet.png", size=64, seed=seed, columns=6)
    env_map(out=out / "skygarden_map.png", scale=12, seed=seed, episodes=12)


@data_app.command("generate")
def data_generate(
    out: Path = typer.Argument(..., help="Store directory to create, or to resume filling."),
    preset: str = typer.Option("pretrain", help="pretrain | finetune | smoke-pretrain | smoke-finetune"),
    episodes: Optional[int] = typer.Option(None, help="Override the preset's episode count."),
    size: int = typer.Option(64, help="Square image size (128: the paper's)."),
    seed: Optional[int] = typer.Option(None, help="Override the dataset seed."),
    num_envs: Optional[int] = typer.Option(None, help="Worlds recorded together."),
) -> None:
    """Record the synthetic population set or the curated demonstrations. Resumes if killed."""
    import time

    from tqdm import tqdm

    from agentalign.players.generate import generate, preset as get_preset

    overrides = {k: v for k, v in dict(episodes=episodes, seed=seed, num_envs=num_envs).items() if v is not None}
    cfg = checked(get_preset, preset, **overrides)
    start = time.perf_counter()
    with tqdm(total=cfg.episodes, unit="ep", desc=f"generate {preset}", disable=None) as bar:
        def progress(k: int, total: int) -> None:
            bar.n = k
            bar.refresh()

        summary = checked(generate, out, cfg, progress, size=size)
    dt = time.perf_counter() - start
    typer.echo(f"{out}: {summary['episodes']} episodes ({summary['written']} new, {summary['frames']} frames "
               f"in {dt:.1f} s, {summary['frames'] / max(dt, 1e-9):.0f} frames/s)")  # fmt: skip


@data_app.command("sheet")
def data_sheet(
    path: Path = typer.Argument(..., help="Store directory."),
    out: Path = typer.Option(Path("out/data_sheet.png"), help="Output PNG."),
    samples: int = typer.Option(24, min=1, help="Sample frames in the contact sheet."),
    seed: int = typer.Option(0),
) -> None:
    """A PNG of sample frames beside a top-down heatmap of the dataset's trajectories."""
    import imageio.v3 as iio
    import numpy as np

    from agentalign.data import open_store
    from agentalign.envs import viz
    from agentalign.envs.skygarden import topdown

    store = checked(open_store, path)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(store), size=min(samples, len(store)), replace=False)
    frames = []
    for i in sorted(picks):
        t = int(rng.integers(store.length(i)))
        frames.append(store.frames(i, t, t + 1)[0])
    sheet = viz.contact_sheet(frames, cols=6, scale=max(1, 96 // store.image_size[0]))
    positions = [store.extras(i)["pos"] for i in range(len(store)) if "pos" in store.extras(i)]
    heat = topdown.heatmap_image(np.concatenate(positions) if positions else np.zeros((0, 2)), scale=12)
    img = np.concatenate([viz.fit_height(sheet, heat.shape[0]), heat], 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, img)
    typer.echo(f"wrote {out}: {len(frames)} frames, heatmap of {sum(len(p) for p in positions)} positions")


@app.command("pipeline")
def pipeline(
    config: str = typer.Option("cpu", help="Preset (cpu | cpu-wide | smoke | paper; configs/NAME.toml) or a TOML file."),
    target: Optional[str] = typer.Option(None, help="Target pad: left | middle | right (default: the preset's)."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default: runs/<preset>)."),
    from_: Optional[str] = typer.Option(None, "--from", help="Rerun from this stage on."),
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
    checked(run_pipeline, folder, cfg, from_, echo=lambda line: typer.echo(line))


@env_app.command("info")
def env_info() -> None:
    """The spaces, characters, spawns and pads, as JSON."""
    from agentalign.envs import gamepad
    from agentalign.envs.skygarden import world as W

    typer.echo(json.dumps({
        "id": "agentalign/SkyGarden-v0",
        "action_nvec": gamepad.ACTION_NVEC.tolist(),
        "buttons": list(gamepad.BUTTON_NAMES),
        "sticks": list(gamepad.STICK_NAMES),
        "characters": {c.name: c.speed for c in W.CHARACTERS},
        "spawns": W.SPAWNS.tolist(),
        "pads": dict(zip(W.PAD_NAMES, W.PAD_CENTRES.tolist())),
        "map_cells": [W.MAP_WIDTH, W.MAP_HEIGHT],
    }, indent=2))  # fmt: skip




if __name__ == "__main__":  # pragma: no cover
    app()
