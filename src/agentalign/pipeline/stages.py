"""What each pipeline stage does: one call of the stage's run function in the library (the same
one its CLI command calls), with the run folder's paths, returning its headline figures.

Folders (under the run folder): data_pretrain/, data_finetune/ (stores), pretrain/, sft/, scratch/
(checkpoints), eval_*/ (eval.json, figures, videos), rollouts/ (the SFT agent's trajectories),
prefs/prefs.jsonl, reward/, sweep/, pft/, align/, dpo/, and report.html + results.json at the top.
With `reproduce`, the same functions (preferences, reward_model, preference_ft, online_align,
evaluation, behaviour_clone) make its variants' folders from other inputs, named by the stage.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

from agentalign.data import open_store
from agentalign.eval import evaluate
from agentalign.eval.report import write_report
from agentalign.models import PolicyConfig
from agentalign.players.generate import generate
from agentalign.prefs import PreferenceSet
from agentalign.rollout import RolloutConfig, record_rollouts
from agentalign.train.align import run_align
from agentalign.train.bc import BCConfig, train_bc
from agentalign.train.dpo import run_dpo
from agentalign.train.rest import run_pft
from agentalign.train.reward import label_synthetic, run_reward, run_sweep, split_ids

if TYPE_CHECKING:
    from agentalign.pipeline.runner import Run


def _store(run: "Run", name: str):
    return run.dir(name) / "store"


def data_pretrain(run: "Run") -> dict:
    return generate(_store(run, "data_pretrain"), run.cfg.data_pretrain, size=run.cfg.model.image_size)


def data_finetune(run: "Run") -> dict:
    return generate(_store(run, "data_finetune"), run.cfg.data_finetune, size=run.cfg.model.image_size)


def behaviour_clone(run: "Run", name: str, cfg: BCConfig, data: str, init: str | None = None,
                    model: PolicyConfig | None = None) -> dict:  # fmt: skip
    """Clone the store of stage `data` into name/model: from stage `init`'s model, or a fresh
    `model` (default: the pipeline's)."""
    start = {"init": run.dir(init) / "model"} if init is not None else {"model": model or run.cfg.model}
    s = train_bc(cfg, _store(run, data), run.dir(name) / "model", stage=name, progress=True, **start)
    return {"final_loss": s.get("final_loss"), "steps": s.get("steps"), "seconds": s.get("seconds")}


def pretrain(run: "Run") -> dict:
    return behaviour_clone(run, "pretrain", run.cfg.pretrain, "data_pretrain")


def sft(run: "Run") -> dict:
    return behaviour_clone(run, "sft", run.cfg.sft, "data_finetune", init="pretrain")


def scratch(run: "Run") -> dict:
    return behaviour_clone(run, "scratch", run.cfg.scratch, "data_finetune")


def evaluation(run: "Run", name: str, model: str, ev=None) -> dict:
    """Evaluate stage `model`'s policy into folder `name` with `ev` (default: the main evaluation)."""
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
    """`episodes` rollouts of stage `policy`'s agent into name/store, for preferences; the pads
    reached by all of them (not only those this call wrote, so a resumed stage reports the same)."""
    record_rollouts(run.dir(policy) / "model", _store(run, name),
                    RolloutConfig(episodes=episodes, seed=seed, temperature=run.cfg.prefs.temperature),
                    size=run.cfg.model.image_size)  # fmt: skip
    store = open_store(_store(run, name))
    pads = Counter(store.metadata(i)["jump_pad"] for i in range(len(store)))
    return {"episodes": len(store), "jump_pads": {p: pads.get(p, 0) for p in ("left", "middle", "right", "none")}}


def rollouts(run: "Run") -> dict:
    return record(run, "rollouts", "sft", run.cfg.prefs.rollout_episodes, run.cfg.seed)


def preferences(run: "Run", name: str, target: str) -> dict:
    """Preferences for pad `target` over the SFT agent's rollouts, prefs.train of them in the
    training split, in name/prefs.jsonl: the synthetic labeller's, or people's labels exported."""
    out = run.dir(name) / "prefs.jsonl"
    if run.cfg.prefs.source == "synthetic":
        return label_synthetic(_store(run, "rollouts"), target, run.cfg.prefs.train, out)
    from agentalign.labeling.export import export_labels  # the web app's package, only when people label

    n = export_labels(run.out, out, store=_store(run, "rollouts"))
    labelled = PreferenceSet.load(out)
    train, test = (set(ids) for ids in split_ids(labelled, 0))
    within = lambda ids: sum(1 for pref in labelled.prefs if set(pref.ids) <= ids for _ in pref.pairs())  # noqa: E731
    return {"labels": len(labelled), "train": len(train), "test": len(test), "train_comparisons": within(train),
            "test_comparisons": within(test), "labellers": n.get("labellers")}  # fmt: skip


def prefs(run: "Run") -> dict:
    return preferences(run, "prefs", run.cfg.target)


def reward_model(run: "Run", name: str, prefs: str, trajectories: int | None = None) -> dict:
    """A reward model on the agent encoder from stage `prefs`'s training comparisons over the SFT
    agent's rollouts: all of them, or (`trajectories`) all pairs of that many random training
    trajectories; scored on the held-out split. Embeddings are cached in reward/cache for every
    stage that reads them (the sweep and DPO too)."""
    return run_reward(_store(run, "rollouts"), run.dir(prefs) / "prefs.jsonl", run.dir(name) / "model",
                      replace(run.cfg.reward, encoder="agent"), policy=run.dir("sft") / "model",
                      cache=run.dir("reward") / "cache", trajectories=trajectories)  # fmt: skip


def reward(run: "Run") -> dict:
    if not (run.marker("prefs") or {}).get("result", {}).get("train_comparisons"):
        raise ValueError(f"{run.dir('prefs') / 'prefs.jsonl'} holds no training comparison yet: label with `agentalign "
                         f"label serve {run.out}` (docs/labeling.md), then run the same command again")  # fmt: skip
    return reward_model(run, "reward", "prefs")


def sweep(run: "Run") -> dict:
    s, r = run.cfg.sweep, run.cfg.reward
    cfg = replace(r, max_steps=s.max_steps or r.max_steps, traj_per_step=s.traj_per_step or r.traj_per_step)
    return run_sweep(_store(run, "rollouts"), run.dir("prefs") / "prefs.jsonl", run.dir("sweep"), cfg,
                     policy=run.dir("sft") / "model", encoders=s.encoders, seeds=s.seeds, points=s.points,
                     cache=run.dir("reward") / "cache")  # fmt: skip


def preference_ft(run: "Run", name: str, reward: str, prefs: str) -> dict:
    """Preference fine-tuning (ReST) of the SFT agent from stage `prefs`'s stored rollouts, ranked
    by stage `reward`'s model."""
    return run_pft(run.dir("sft") / "model", run.dir(reward) / "model", _store(run, "rollouts"), run.dir(prefs) / "prefs.jsonl",
                   run.dir(name) / "model", run.cfg.pft, progress=True)  # fmt: skip


def pft(run: "Run") -> dict:
    return preference_ft(run, "pft", "reward", "prefs")


def online_align(run: "Run", name: str, start: str, reward: str, cfg, target: str) -> dict:
    """Align stage `start`'s policy towards stage `reward`'s model (train/align.py)."""

    def show(done: int, total: int, row: dict) -> None:  # REINFORCE's progress, every 10 batches
        if done % (cfg.reinforce.batch_episodes * 10) == 0 or done == total:
            print(f"    {name} {done}/{total} episodes  success {100 * row['align/success']:.0f}%", flush=True)

    return run_align(run.dir(start) / "model", run.dir("sft") / "model", run.dir(reward) / "model", run.dir(name) / "model",
                     cfg, target, progress=show)  # fmt: skip


def align(run: "Run") -> dict:
    return online_align(run, "align", "pft", "reward", run.cfg.align, run.cfg.target)


def dpo(run: "Run") -> dict:
    return run_dpo(run.dir("sft") / "model", _store(run, "rollouts"), run.dir("prefs") / "prefs.jsonl",
                   run.dir("dpo") / "model", run.cfg.dpo, cache=run.dir("reward") / "cache")  # fmt: skip


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
    run.write_results()
    return {"path": write_report(run.out).name}  # relative to the run folder, which may move


STAGE_FUNCTIONS = {
    "data_pretrain": data_pretrain, "data_finetune": data_finetune, "pretrain": pretrain, "sft": sft,
    "scratch": scratch, "eval_base": eval_base, "eval_sft": eval_sft, "eval_scratch": eval_scratch,
    "rollouts": rollouts, "prefs": prefs, "reward": reward, "sweep": sweep, "pft": pft, "align": align,
    "dpo": dpo, "eval_pft": eval_pft, "eval_align": eval_align, "eval_dpo": eval_dpo, "eval_deploy": eval_deploy,
    "report": report,
}  # fmt: skip
