"""Online alignment: the agent plays, the reward model scores, the agent moves towards what scores
well (paper section 3.6, appendix A step 5). Three steps, each optional, in this order:

    reinforce   the paper's REINFORCE with a KL leash to the SFT policy (train/reinforce.py)
    rest        ReST rounds at the sampling temperature (train/rest.py): play, keep the best of each
                start state, clone, repeat — online ReST with several grow steps, the paper's further work
    sharpen     one more ReST step on episodes sampled at a low temperature: the agent's
                low-temperature routes cloned into its T = 1 policy

Departure from the paper: the presets align with the ReST rounds and the sharpen, not REINFORCE
(`--set align.reinforce.episodes=9600` runs the paper's; docs/journal.md has both measured).
The objective of each step is in its own module.

A killed run resumes: REINFORCE's result is kept once finished (out/reinforce), and the ReST
rounds resume round by round.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from agentalign.config import config_to_dict
from agentalign.io import atomic_write_json, atomic_write_text
from agentalign.models import Policy
from agentalign.models.reward import check_reward_matches
from agentalign.train.reinforce import ReinforceConfig, run_reinforce
from agentalign.train.rest import ALIGN_SEED, CloneConfig, RestConfig, log_rounds, merge_rounds, run_rest

# The alignment's clones: all but the pixel encoder at 1e-3, half the windows where the route is chosen.
_ALIGN_CLONE = CloneConfig(lr=1e-3, train_only="transformer", first_window_share=0.5)


@dataclass(frozen=True)
class AlignConfig:
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
    # Four rounds of 396 episodes, four from each of 99 start states; the best of each start's four
    # cloned when the reward model scores it at least 0.7; each clone a soup of two.
    rest: RestConfig = field(default_factory=lambda: RestConfig(rounds=4, episodes=396, samples_per_start=4, keep=0.25,
                                                                min_score=0.7, soup=2, clone=_ALIGN_CLONE))  # fmt: skip
    # Then 800 episodes at T = 0.3, the best half of each spawn's cloned.
    sharpen: RestConfig = field(default_factory=lambda: RestConfig(rounds=1, episodes=800, keep=0.5, min_score=0.7, soup=2,
                                                                   temperature=0.3, clone=_ALIGN_CLONE))  # fmt: skip
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.reinforce.episodes or self.rest.rounds or self.sharpen.rounds):
            raise ValueError("nothing to align with: set reinforce.episodes, rest.rounds or sharpen.rounds above 0")

    @property
    def online_episodes(self) -> int:
        return self.reinforce.episodes + self.rest.rounds * self.rest.episodes + self.sharpen.rounds * self.sharpen.episodes


def run_align(policy: str | Path, sft: str | Path, reward_dir: str | Path, out: str | Path, cfg: AlignConfig, target: str,
              progress=None) -> dict:  # fmt: skip
    """Align the policy at `policy` (the SFT or preference-fine-tuned agent) towards the reward model
    at `reward_dir` (its encoder the SFT agent at `sft`); the aligned policy is saved in `out`.
    `target` names the pad whose true share is logged (never trained on)."""
    policy, sft, reward_dir, out = Path(policy), Path(sft), Path(reward_dir), Path(out)
    check_reward_matches(reward_dir, sft)
    t0 = time.perf_counter()
    summary: dict = {"target": target}
    current = policy
    if cfg.reinforce.episodes:
        done = out / "reinforce" / "summary.json"  # written once REINFORCE's policy is on disk
        key = {"policy": str(policy), "sft": str(sft), "reward": str(reward_dir), "target": target,
               "reinforce": config_to_dict(cfg.reinforce), "seed": cfg.seed}  # fmt: skip
        saved = json.loads(done.read_text()) if done.is_file() else None
        if saved is None or saved["key"] != key:  # and the ReST steps after it start afresh too
            for d in ("rest", "sharpen"):
                shutil.rmtree(out / d, ignore_errors=True)
            (out / "metrics.jsonl").unlink(missing_ok=True)
            r = run_reinforce(policy, sft, reward_dir, out / "reinforce", cfg.reinforce, target, ALIGN_SEED + cfg.seed, progress)
            _copy_metrics(out / "reinforce", out)
            atomic_write_json(done, {"key": key, "summary": r})
            saved = {"summary": r}
        summary["reinforce"] = saved["summary"]
        current = out / "reinforce"
    logged = []  # rounds sampled at T = 1 continue the online success curve
    if cfg.rest.rounds:
        current, rounds = run_rest(current, reward_dir, sft, out / "rest", cfg.rest, ALIGN_SEED + cfg.seed)
        summary["rest"] = merge_rounds(rounds)
        logged += rounds if cfg.rest.temperature == cfg.reinforce.temperature else []
    if cfg.sharpen.rounds:  # its seeds continue the rounds': the start states a next round would play
        current, rounds = run_rest(current, reward_dir, sft, out / "sharpen", cfg.sharpen, ALIGN_SEED + cfg.seed,
                                   first_round=cfg.rest.rounds)  # fmt: skip
        summary["sharpen"] = merge_rounds(rounds)
        logged += rounds if cfg.sharpen.temperature == cfg.reinforce.temperature else []
    if logged:
        log_rounds(out, logged, target, cfg.reinforce.episodes)
    Policy.from_pretrained(current).save_pretrained(out, stage="align", parent=str(policy), reference=str(sft),
                                                    reward_model=str(reward_dir), target=target)  # fmt: skip
    summary["online_episodes"] = cfg.online_episodes
    summary["seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "align_summary.json", summary)
    return summary


def _copy_metrics(src: Path, dst: Path) -> None:
    """REINFORCE's per-batch rows at the head of the stage's metrics.jsonl (the curve of figures 8/9)."""
    atomic_write_text(dst / "metrics.jsonl", (src / "metrics.jsonl").read_text())
