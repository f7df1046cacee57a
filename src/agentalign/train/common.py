"""Mechanics shared by the training stages: seeding, devices,
AdamW parameter groups, the learning-rate schedule, run directories and exact-resume state.

Nothing here knows about a particular objective: the losses are in agentalign.train.losses, and
each stage module owns its loop.

Training state for exact resume (`save_train_state` / `load_train_state`) lives in
`OUT/train_state/`:

    latest.json                  the commit point: step, the live snapshot's folder, JSON scalars
                                 (optimizer hyper-parameters, numpy/python RNG states, whatever
                                 the stage adds, e.g. its loader position), and "previous": the
                                 snapshot before it, kept as a fall back
    step-000000500-1a2b3c4d/     model.safetensors, optimizer.safetensors, rng.safetensors and
                                 state.json (what latest.json said of it)

A snapshot is written into a fresh folder, then latest.json is replaced atomically, then folders
other than it and the previous one are deleted; a crash at any moment leaves latest.json naming a
complete snapshot. A snapshot damaged later (a disk that filled up, a copy cut short) makes
load_train_state warn and resume from the previous one. Safetensors and JSON only, never pickle.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from agentalign.io import atomic_save_safetensors, atomic_write_json


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy's legacy global and torch; return a NumPy Generator to pass around."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------
# Devices, optimiser, schedule


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch.device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but CUDA is not available here")
    return dev


def no_decay(name: str, param: torch.nn.Parameter, module: torch.nn.Module) -> bool:
    """Weight decay applies to the weights of Linear and Conv layers only: not to norms, biases,
    embeddings or learned positions, whose scale is meaningful (GPT-2 / minGPT practice)."""
    return not (isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)) and name.endswith("weight"))


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters (requires_grad) split into a decayed and an undecayed group."""
    owner: dict[str, torch.nn.Module] = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if no_decay(name, p, owner[name]) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_at(step: int, lr: float, warmup: int, total: int, schedule: str = "constant") -> float:
    """Learning rate for update number `step` (0-based): linear warm-up over `warmup` updates, then
    constant, or a cosine decay to zero at `total`."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        span = max(1, total - warmup)
        return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
    raise ValueError(f"schedule must be constant or cosine, got {schedule!r}")


# --------------------------------------------------------------------------------------------
# Run directories


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def check_run_config(out_dir: str | Path, config: dict[str, Any], ignore: Iterable[str] = ()) -> str:
    """Claim `out_dir` for a run with `config` (plain data, see config_to_dict).

    Returns "fresh" (nothing there: run_config.json is written) or "existing" (a run with the same
    config, to resume or return). Raises ValueError for a run with another config, naming the
    differing keys, or for a checkpoint folder this machinery did not write. Keys in `ignore`
    (settings that do not change results, such as the number of loader workers) may differ."""
    out = Path(out_dir)
    path = out / "run_config.json"
    if path.exists():
        saved = _flatten(json.loads(path.read_text()))
        now = _flatten(config)
        skip = set(ignore)
        diffs = [f"{k}: {saved.get(k, '<unset>')!r} there, {now.get(k, '<unset>')!r} now"
                 for k in sorted(set(saved) | set(now)) if k not in skip and saved.get(k) != now.get(k)]  # fmt: skip
        if diffs:
            raise ValueError(f"{out} holds a run with a different config ({'; '.join(diffs[:6])}"
                             f"{'; ...' if len(diffs) > 6 else ''}); choose another output folder or delete it")  # fmt: skip
        atomic_write_json(path, config)  # the ignored settings as they are now
        return "existing"
    if (out / "config.json").exists() or (out / TRAIN_STATE).exists():
        raise ValueError(f"{out} holds a checkpoint without run_config.json; choose another output folder")
    atomic_write_json(path, config)
    return "fresh"


# --------------------------------------------------------------------------------------------
# Exact-resume training state

TRAIN_STATE = "train_state"
TRAIN_STATE_SCHEMA = 1
SNAPSHOT_STATE = "state.json"  # in each snapshot: what latest.json said of it


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Global RNG states: torch (and CUDA) as tensors, numpy's legacy and Python's as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    info = {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}  # fmt: skip
    return tensors, info


def set_rng_state(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, keys, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = info["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _param_order(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own (state_dict index) order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def optimizer_state_tensors(model: torch.nn.Module,
                            optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:  # fmt: skip
    """An optimizer's state as tensors keyed "param.name/slot" plus JSON (hyper-parameters, scalars)."""
    order = _param_order(model, optimizer)
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, slots in sd["state"].items():
        for slot, v in slots.items():
            key = f"{order[idx]}/{slot}"
            if torch.is_tensor(v):
                tensors[key] = v.detach().cpu().contiguous()
            else:
                scalars[key] = v
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
                      | {"params": [order[i] for i in g["params"]]})  # fmt: skip
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:  # fmt: skip
    """Inverse of `optimizer_state_tensors`; the optimizer must hold the same parameters."""
    order = _param_order(model, optimizer)
    saved = [n for g in info["param_groups"] for n in g["params"]]
    if saved != order:
        raise ValueError("saved optimizer state is for other parameters "
                         f"({len(saved)} saved, {len(order)} now); was train_only changed?")  # fmt: skip
    index = {n: i for i, n in enumerate(order)}
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(info["scalars"].items()):
        name, slot = key.rsplit("/", 1)
        state.setdefault(index[name], {})[slot] = v
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)  # keeps the current hyper-parameters; the schedule sets lr each step


def _read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def save_train_state(out_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Snapshot parameters, optimizer, RNG states and `extra` (JSON) for an exact resume. The
    snapshot latest.json named until now is kept as "previous" (a fall back should this one be
    damaged); older ones are deleted."""
    root = Path(out_dir) / TRAIN_STATE
    snap = root / f"step-{step:09d}-{uuid.uuid4().hex[:8]}"  # fresh: latest.json never names a half-written one
    meta = {"step": str(step)}
    atomic_save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                            snap / "model.safetensors", meta)  # fmt: skip
    opt_tensors, opt_info = optimizer_state_tensors(model, optimizer)
    atomic_save_safetensors(opt_tensors, snap / "optimizer.safetensors", meta)
    rng_tensors, rng_info = rng_state()
    atomic_save_safetensors(rng_tensors, snap / "rng.safetensors", meta)
    state = {"schema": TRAIN_STATE_SCHEMA, "step": step, "snapshot": snap.name, "optimizer": opt_info,
             "rng": rng_info, **(extra or {})}  # fmt: skip
    atomic_write_json(snap / SNAPSHOT_STATE, state)  # what latest.json says of it, for a fall back to it
    previous = None
    try:
        previous = _read_json(root / "latest.json").get("snapshot")
    except (OSError, ValueError, AttributeError):
        pass  # the first snapshot, or a latest.json that names nothing to keep
    if not (isinstance(previous, str) and previous and (root / previous / SNAPSHOT_STATE).is_file()):
        previous = None
    atomic_write_json(root / "latest.json", {**state, "previous": previous})
    for old in root.iterdir():
        if old.is_dir() and old.name not in (snap.name, previous):
            shutil.rmtree(old, ignore_errors=True)
    return snap


def _read_snapshot(snap: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], ...]:
    """The three tensor files of a snapshot, each read whole (a truncated or missing one fails here,
    before anything is restored); raises _Damaged naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out = []
    for name, dev in (("model.safetensors", str(device)), ("optimizer.safetensors", "cpu"), ("rng.safetensors", "cpu")):
        path = snap / name
        try:
            out.append(load_file(path, device=dev))
        except (SafetensorError, OSError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise _Damaged(path, why) from None
    return tuple(out)


class _Damaged(Exception):
    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} is damaged ({why})")
        self.path, self.why = path, why


def load_train_state(out_dir: str | Path, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:  # fmt: skip
    """Restore what `save_train_state` wrote (parameters, optimizer, RNG states); returns latest.json
    (with "step" and the stage's extras), or None when there is no state to resume.

    A damaged latest snapshot (a file truncated or missing) falls back to the previous one with a
    warning naming the damaged file, and latest.json is rewritten to name the previous one; with no
    usable snapshot, a ValueError names the file and says to delete the folder or rerun the stage."""
    out = Path(out_dir)
    root = out / TRAIN_STATE
    path = root / "latest.json"
    if not path.exists():
        return None
    advice = f"delete {out} or rerun the stage to start it again"
    try:
        meta = _read_json(path)
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except ValueError as e:  # not JSON, not text
        raise ValueError(f"{path} is damaged ({e}); {advice}") from None
    if meta.get("schema") != TRAIN_STATE_SCHEMA:
        raise ValueError(f"{path}: train state schema {meta.get('schema')!r}, this version reads {TRAIN_STATE_SCHEMA}")
    device = next(model.parameters()).device
    try:
        tensors = _read_snapshot(root / str(meta.get("snapshot")), device)
    except _Damaged as damaged:
        prev = meta.get("previous")
        if not (isinstance(prev, str) and prev):
            raise ValueError(f"{damaged} and there is no earlier checkpoint; {advice}") from None
        try:
            prev_meta = _read_json(root / prev / SNAPSHOT_STATE)
            if not isinstance(prev_meta, dict) or prev_meta.get("snapshot") != prev:
                raise _Damaged(root / prev / SNAPSHOT_STATE, "not the state of this snapshot")
            tensors = _read_snapshot(root / prev, device)
        except (_Damaged, OSError, ValueError) as e:
            why = e if isinstance(e, _Damaged) else f"{root / prev / SNAPSHOT_STATE}: {getattr(e, 'strerror', None) or e}"
            raise ValueError(f"{damaged} and so is the previous checkpoint ({why}); {advice}") from None
        warnings.warn(f"{damaged}; resuming from the previous checkpoint (step {prev_meta['step']}) in {root / prev}",
                      stacklevel=2)  # fmt: skip
        meta = {**prev_meta, "previous": None}
        atomic_write_json(path, meta)  # the damaged snapshot is dropped at the next save
    model_t, opt_t, rng_t = tensors
    model.load_state_dict(model_t, strict=True)
    load_optimizer_state(model, optimizer, opt_t, meta["optimizer"])
    set_rng_state(rng_t, meta["rng"])
    return meta


# Parameter-name prefixes that each partial `train_only` mode keeps frozen ("all" freezes nothing).
FROZEN = {"head": ("encoder.", "obs_proj.", "action_embed.", "bos", "pos", "blocks.", "ln_f."),
          "transformer": ("encoder.", "obs_proj.")}  # fmt: skip


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]

