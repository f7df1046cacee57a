"""`agentalign env ...`: look at the built-in SkyGarden island (clips, contact sheets, maps, spaces)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from agentalign.cli.common import checked

env_app = typer.Typer(help="Look at the built-in SkyGarden island.", no_args_is_help=True)


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
