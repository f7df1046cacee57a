"""`agentalign data ...`: inspect, verify, import and export episode stores.

Thin: each command parses its arguments and calls one function of agentalign.data. Bad input (a
missing or invalid store, a bad clip or dataset, bad arguments) prints one clear line naming the
file and exits with status 2, like every other command; a failure during the work (I/O) exits 1
through the top-level handler. `data verify` exits 1 when it finds damage: that is its finding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from agentalign.cli.common import checked, fail

data_app = typer.Typer(help="Inspect, verify, import and export episode stores.", no_args_is_help=True)


def _minari_checked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`checked`, and a missing optional minari/h5py is bad input too (exit 2, how to install)."""
    try:
        return checked(fn, *args, **kwargs)
    except ImportError as e:
        fail(str(e))


def _format_info(info: dict[str, Any]) -> str:
    n = max(info["n_episodes"], 1)
    lines = [
        f"store        {info['path']}",
        f"dataset id   {info['dataset_id']}  (schema {info['schema_version']})",
        f"images       {info['image_size'][0]}x{info['image_size'][1]}",
        f"episodes     {info['n_episodes']}  in {info['n_chunks']} chunks",
        f"steps        {info['n_steps']}",
        f"on disk      {info['bytes_on_disk'] / 2**20:.1f} MiB  (frames compressed {info['frame_compression_ratio']}x)",
        "length       min {min}  mean {mean}  median {median}  max {max}".format(**info["length"]),
    ]
    for key in ("jump_pad", "character", "intent"):
        if not info.get(key):
            continue
        dist = "  ".join(f"{k} {v} ({100 * v / n:.0f}%)" for k, v in info[key].items())
        lines.append(f"{key:<12} {dist}")
    return "\n".join(lines)


@data_app.command("info")
def info(
    path: Path = typer.Argument(..., help="Store directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Counts, jump-pad and character distributions and episode lengths (metadata only)."""
    from agentalign.data.store import StoreReader

    summary = checked(lambda: StoreReader(path).info())
    typer.echo(json.dumps(summary, indent=2) if as_json else _format_info(summary))


@data_app.command("verify")
def verify(
    path: Path = typer.Argument(..., help="Store directory."),
    deep: bool = typer.Option(False, "--deep", help="Also decompress every block."),
) -> None:
    """Check every chunk file's size and checksum; name each damaged file.

    Exit status 1 means damage was found (its finding); 2 means bad input (no store, no manifest).
    """
    from agentalign.data.store import verify as verify_store

    report = checked(verify_store, path, deep=deep)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("import-be")
def import_be(
    src: Path = typer.Argument(..., help="Directory of Bleeding-Edge-layout clips (.npz, optional .mp4)."),
    dst: Path = typer.Argument(..., help="Store to create or append to."),
    size: int = typer.Option(64, "--size", min=1, help="Square image size of the store."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Report bad clips and go on instead of stopping."),
) -> None:
    """Import recorded gameplay clips, resized to SIZE x SIZE.

    Each clip is an .npz with 'actions' (T, 16) and 'frames' (T, H, W, 3) uint8 (or a <clip>.mp4
    beside it). No clips, or only bad ones, is an error; rerunning resumes a stopped import.
    """
    from agentalign.data.bleeding_edge import import_bleeding_edge

    report = checked(import_bleeding_edge, src, dst, (size, size), skip_bad=skip_bad)
    already = f"; {report.already} were already there" if report.already else ""
    typer.echo(f"imported {report.imported} clips ({report.steps} steps) into {dst}{already}")
    for reason in report.skipped:
        typer.echo(f"skipped: {reason}", err=True)


@data_app.command("export-minari")
def export_minari(
    store: Path = typer.Argument(..., help="Store to export."),
    dst: Path = typer.Argument(..., help="Minari dataset directory to create (data/ goes inside)."),
    dataset_id: str = typer.Option("agentalign/skygarden-v0", "--dataset-id", help="Minari dataset id."),
) -> None:
    """Write the store as a lossless Minari dataset (HDF5, no JPEG), all at once or not at all."""
    from agentalign.data.minari_io import export_minari as export

    data_path = _minari_checked(export, store, dst, dataset_id=dataset_id)
    typer.echo(f"wrote Minari dataset {dataset_id} to {data_path}")


@data_app.command("import-minari")
def import_minari(
    src: str = typer.Argument(..., help="Minari dataset directory, or the id of a local Minari dataset."),
    dst: Path = typer.Argument(..., help="Store to create or append to."),
    size: int = typer.Option(0, "--size", min=0, help="Square image size; 0 keeps the dataset's size."),
) -> None:
    """Append a Minari dataset's episodes to a store."""
    from agentalign.data.minari_io import import_minari as do_import

    n = _minari_checked(do_import, src, dst, size=(size, size) if size else None)
    typer.echo(f"imported {n} episodes into {dst}")


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

    from agentalign.io import check_writable
    from agentalign.players.generate import generate
    from agentalign.players.generate import preset as get_preset

    overrides = {k: v for k, v in dict(episodes=episodes, seed=seed, num_envs=num_envs).items() if v is not None}
    cfg = checked(get_preset, preset, **overrides)
    checked(check_writable, out)
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
    if len(store) == 0:
        fail(f"{path}: the store holds no episodes; nothing to draw")
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
