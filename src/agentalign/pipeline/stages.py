"""What each pipeline stage does: a thin call into the library, returning its headline figures.

Folders (under the run folder): data_pretrain/, data_finetune/ (stores), pretrain/, sft/, scratch/
(checkpoints), eval_*/ (eval.json, figures, videos), rollouts/ (the SFT agent's trajectories),
prefs/prefs.jsonl, reward/, sweep/, pft/, align/, dpo/, and report.html + results.json at the top;
with `refresh`, rollouts_pft/, prefs_pft/ and reward_pft/ (the second reward-model round).
With `reproduce`, the same functions (preferences, reward_model, preference_ft, online_align,
evaluation, behaviour_clone) make its variants' folders from other inputs, named by the stage.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from agentalign.pipeline import Run


def _store(run: "Run", name: str):
    return run.dir(name) / "store"


def data_pretrain(run: "Run") -> dict:
    from agentalign.players.generate import generate

    return generate(_store(run, "data_pretrain"), run.cfg.data_pretrain)


def data_finetune(run: "Run") -> dict:
    from agentalign.players.generate import generate

    return generate(_store(run, "data_finetune"), run.cfg.data_finetune)


def behaviour_clone(run: "Run", name: str, cfg, data: str, init: str | None = None) -> dict:
    """Clone the store of stage `data` into name/model, from stage `init`'s model if given."""
    from agentalign.train.bc import train_bc

    cfg = replace(cfg, data=str(_store(run, data)))
    if init is not None:
        cfg = cfg.with_init(run.dir(init) / "model")
    s = train_bc(cfg, run.dir(name) / "model", progress=True)
    return {"final_loss": float(s.get("final_loss", s.get("loss", float("nan")))), "steps": s.get("steps"),
            "seconds": s.get("seconds")}  # fmt: skip


def pretrain(run: "Run") -> dict:
    return behaviour_clone(run, "pretrain", run.cfg.pretrain, "data_pretrain")


def sft(run: "Run") -> dict:
    return behaviour_clone(run, "sft", run.cfg.sft, "data_finetune", init="pretrain")


def scratch(run: "Run") -> dict:
    return behaviour_clone(run, "scratch", replace(run.cfg.scratch, init=None), "data_finetune")


def evaluation(run: "Run", name: str, model: str, ev=None) -> dict:
    """Evaluate stage `model`'s policy into folder `name` with `ev` (default: the main evaluation)."""
    from agentalign.eval import evaluate

    e = ev or run.cfg.eval
    r = evaluate(run.dir(model) / "model", run.dir(name), episodes=e.episodes, seed=e.seed, temperature=e.temperature,
                 num_envs=e.num_envs, videos=e.videos, size=run.cfg.model.image_size, label=name.removeprefix("eval_"))  # fmt: skip
    return {"jump_pads": r["jump_pads"], "success": r["success"], "episodes": r["episodes"],
            "length": r["length"], "by_spawn": r["by_spawn"]}  # fmt: skip


def eval_base(run: "Run") -> dict:
    return evaluation(run, "eval_base", "pretrain")


def eval_sft(run: "Run") -> dict:
    return evaluation(run, "eval_sft", "sft")


def eval_scratch(run: "Run") -> dict:
    return evaluation(run, "eval_scratch", "scratch")


def record(run: "Run", name: str, policy: str, episodes: int, seed: int) -> dict:
    """`episodes` rollouts of stage `policy`'s agent into name/store, for preferences."""
    from agentalign.rollout import RolloutConfig, record_rollouts

    r = record_rollouts(run.dir(policy) / "model", _store(run, name),
                        RolloutConfig(episodes=episodes, seed=seed, temperature=run.cfg.prefs.temperature),
                        size=run.cfg.model.image_size)  # fmt: skip
    return {"episodes": int(r["episodes"]), "new_jump_pads": r["jump_pads"]}


def rollouts(run: "Run") -> dict:
    return record(run, "rollouts", "sft", run.cfg.prefs.rollout_episodes, run.cfg.seed)


def preferences(run: "Run", name: str, target: str, rollouts: str = "rollouts", train: int | None = None) -> dict:
    """Synthetic preferences for pad `target` over stage `rollouts`'s trajectories (the SFT agent's
    by default), `train` of them (default prefs.train) labelled for training, in name/prefs.jsonl."""
    from agentalign.data import open_store
    from agentalign.train.reward import synthetic_preferences

    store = open_store(_store(run, rollouts))
    p = synthetic_preferences(store, target, run.cfg.prefs.train if train is None else train)
    p.save(run.dir(name) / "prefs.jsonl")
    n_tr, n_te = len(p.meta["train_ids"]), len(p.meta["test_ids"])
    return {"train": n_tr, "test": n_te, "train_comparisons": n_tr * (n_tr - 1) // 2,
            "test_comparisons": n_te * (n_te - 1) // 2}  # fmt: skip


def prefs(run: "Run") -> dict:
    return preferences(run, "prefs", run.cfg.target)


def _embeddings(run: "Run", kind: str, seed: int = 0, dim: int = 512, prefs: str = "prefs", pad: str = "black",
                rollouts: str = "rollouts"):  # fmt: skip
    """Embeddings of all of stage `rollouts`'s trajectories (train split first) under `kind`, and
    stage `prefs`'s comparisons. Cached in reward/ for every stage: they depend on the store and
    encoder only (each store in its own folder, so the two rounds do not evict each other)."""
    from agentalign.data import open_store
    from agentalign.models.reward import checkpoint_fingerprint, load_encoder
    from agentalign.prefs import PreferenceSet
    from agentalign.train.reward import preference_matrix, split_ids, store_embeddings

    store = open_store(_store(run, rollouts))
    pset = PreferenceSet.load(run.dir(prefs) / "prefs.jsonl")
    sft = run.dir("sft") / "model"
    enc = load_encoder(kind, sft if kind == "agent" else None, store.image_size[0], seed, dim)
    key = {"store": store.dataset_id, "encoder": kind, "policy": checkpoint_fingerprint(sft) if kind == "agent" else None,
           "seed": seed, "dim": dim}  # fmt: skip
    train, test = split_ids(pset, len(store))
    cache = run.dir("reward") / ("cache" if rollouts == "rollouts" else f"cache_{rollouts}")
    emb = store_embeddings(store, enc, cache, np.concatenate([train, test]), key, pad)
    return store, pset, train, test, emb[: len(train)], emb[len(train) :], preference_matrix(pset, train), preference_matrix(pset, test), key


def reward_model(run: "Run", name: str, prefs: str, trajectories: int | None = None, rollouts: str = "rollouts") -> dict:
    """A reward model on the agent encoder from stage `prefs`'s training comparisons (over stage
    `rollouts`'s trajectories): all of them, or (`trajectories`) all pairs of that many random
    training trajectories; scored on the held-out split."""
    import torch

    from agentalign.train.reward import pairwise_metrics, train_reward_model

    cfg = replace(run.cfg.reward, encoder="agent")
    store, pset, train, test, e_tr, e_te, P_tr, P_te, key = _embeddings(run, "agent", cfg.seed, cfg.random_dim, prefs,
                                                                        cfg.pad, rollouts)  # fmt: skip
    if trajectories is not None:
        rng = np.random.default_rng([cfg.seed, trajectories])
        sub = torch.from_numpy(np.sort(rng.choice(len(train), trajectories, replace=False)))
        e_tr, P_tr = e_tr[sub], P_tr[sub][:, sub]
    model, info = train_reward_model(e_tr, P_tr, cfg)
    with torch.no_grad():
        metrics = pairwise_metrics(model(e_te), P_te)
    model.save_pretrained(run.dir(name) / "model", stage="reward", encoder="agent", policy=str(run.dir("sft") / "model"),
                          policy_fingerprint=key["policy"], trajectories=store.dataset_id, target=pset.meta["target"], **info)  # fmt: skip
    return {**metrics, **info}


def reward(run: "Run") -> dict:
    return reward_model(run, "reward", "prefs")


def sweep(run: "Run") -> dict:
    from agentalign.prefs import sweep_subset_sizes
    from agentalign.io import atomic_write_json
    from agentalign.train.reward import plot_sweep, sweep as run_sweep

    s = run.cfg.sweep
    rows = []
    for kind in s.encoders:
        cfg = replace(run.cfg.reward, encoder=kind, max_steps=s.max_steps or run.cfg.reward.max_steps,
                      traj_per_step=s.traj_per_step or run.cfg.reward.traj_per_step)  # fmt: skip
        _, _, _, _, e_tr, e_te, P_tr, P_te, _ = _embeddings(run, kind, cfg.seed, cfg.random_dim, pad=cfg.pad)
        rows += run_sweep(e_tr, P_tr, e_te, P_te, sweep_subset_sizes(e_tr.shape[0], points=s.points), s.seeds, cfg)
    atomic_write_json(run.dir("sweep") / "sweep.json", {"rows": rows})
    plot_sweep(rows, run.dir("sweep") / "sweep.png", title=f"reward models, target {run.cfg.target}")
    largest = {}
    for kind in s.encoders:
        sel = [r for r in rows if r["encoder"] == kind]
        top = max(r["comparisons"] for r in sel)
        largest[kind] = float(np.mean([r["reward/accuracy"] for r in sel if r["comparisons"] == top]))
    return {"largest": largest, "points": len(rows)}


def preference_ft(run: "Run", name: str, reward: str, prefs: str) -> dict:
    """Preference fine-tuning of the SFT agent on stage `prefs`'s training trajectories as ranked
    by stage `reward`'s model."""
    from agentalign.prefs import PreferenceSet
    from agentalign.train.preference_ft import preference_finetune
    from agentalign.train.reward import split_ids

    pset = PreferenceSet.load(run.dir(prefs) / "prefs.jsonl")
    train, _ = split_ids(pset, 0)
    s = preference_finetune(run.dir("sft") / "model", run.dir(reward) / "model", _store(run, "rollouts"), train,
                            run.dir(name) / "model", run.cfg.pft, progress=True)  # fmt: skip
    last = s["rounds"][-1]
    return {"kept": last["kept"], "kept_pads": last["kept_pads"], "rounds": s["rounds"]}


def pft(run: "Run") -> dict:
    return preference_ft(run, "pft", "reward", "prefs")


def online_align(run: "Run", name: str, start: str, reward: str, cfg) -> dict:
    """REINFORCE from stage `start`'s policy towards stage `reward`'s model, regularised to SFT."""
    from agentalign.train.reinforce import train_reinforce

    out = run.dir(name) / "model"  # an interrupted run resumes its polish, or starts REINFORCE again

    def show(done, total, row):
        if done % (cfg.batch_episodes * 10) == 0 or done == total:
            print(f"    {name} {done}/{total} episodes  success {100 * row['align/success']:.0f}%  "
                  f"reward {row.get('align/reward_return', float('nan')):.3f}", flush=True)  # fmt: skip

    return train_reinforce(run.dir(start) / "model", run.dir("sft") / "model", run.dir(reward) / "model", out, cfg,
                           progress=show)  # fmt: skip


def align(run: "Run") -> dict:
    return online_align(run, "align", "pft", "reward_pft" if run.cfg.refresh.enabled else "reward", run.cfg.align)


# The refresh: a second reward-model round on the preference-fine-tuned agent's own rollouts.


def rollouts_pft(run: "Run") -> dict:
    f = run.cfg.refresh
    return record(run, "rollouts_pft", "pft", f.sizes(run.cfg.prefs)[0], run.cfg.seed + f.seed_offset)


def prefs_pft(run: "Run") -> dict:
    return preferences(run, "prefs_pft", run.cfg.target, "rollouts_pft", run.cfg.refresh.sizes(run.cfg.prefs)[1])


def reward_pft(run: "Run") -> dict:
    return reward_model(run, "reward_pft", "prefs_pft", rollouts="rollouts_pft")


def dpo(run: "Run") -> dict:
    from agentalign.train.dpo import lengths_and_actions, strict_pairs, train_dpo

    store, pset, train, test, e_tr, e_te, P_tr, P_te, key = _embeddings(run, "agent", run.cfg.reward.seed, run.cfg.reward.random_dim)
    if len(strict_pairs(P_tr)[0]) == 0:  # every comparison a tie (e.g. an agent that never reaches a pad)
        return {"skipped": "no strict preference pairs in the training split"}
    lengths, actions = lengths_and_actions(store, train, e_tr.shape[1])
    return train_dpo(run.dir("sft") / "model", e_tr, actions, lengths, P_tr, run.dir("dpo") / "model", run.cfg.dpo)


def eval_pft(run: "Run") -> dict:
    return evaluation(run, "eval_pft", "pft")


def eval_align(run: "Run") -> dict:
    return evaluation(run, "eval_align", "align")


def eval_deploy(run: "Run") -> dict:
    """The aligned agent again, sampled at the deployment temperature (`deploy.temperature`)."""
    return evaluation(run, "eval_deploy", "align", run.by_name["eval_deploy"].config)


def eval_dpo(run: "Run") -> dict:
    skipped = (run.marker("dpo") or {}).get("result", {}).get("skipped")
    if skipped:
        return {"skipped": f"DPO did not run: {skipped}"}
    return evaluation(run, "eval_dpo", "dpo")


def report(run: "Run") -> dict:
    from agentalign.eval.report import write_report

    path = write_report(run)
    return {"path": str(path)}


STAGE_FUNCTIONS = {
    "data_pretrain": data_pretrain, "data_finetune": data_finetune, "pretrain": pretrain, "sft": sft,
    "scratch": scratch, "eval_base": eval_base, "eval_sft": eval_sft, "eval_scratch": eval_scratch,
    "rollouts": rollouts, "prefs": prefs, "reward": reward, "sweep": sweep, "pft": pft, "align": align,
    "dpo": dpo, "eval_pft": eval_pft, "eval_align": eval_align, "eval_dpo": eval_dpo, "eval_deploy": eval_deploy,
    "rollouts_pft": rollouts_pft, "prefs_pft": prefs_pft, "reward_pft": reward_pft, "report": report,
}  # fmt: skip
