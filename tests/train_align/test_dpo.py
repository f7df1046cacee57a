import json

import pytest
import torch

from agentalign.models import Policy
from agentalign.prefs import Preference, PreferenceSet
from agentalign.train.dpo import DPOConfig, strict_pairs, train_dpo
from agentalign.train.reward import preference_matrix


def test_strict_pairs_orient_and_drop_ties():
    P = torch.full((3, 3), float("nan"))
    P[0, 1], P[1, 0] = 0.0, 1.0
    P[0, 2], P[2, 0] = 0.5, 0.5
    P[1, 2], P[2, 1] = 1.0, 0.0
    c, r = strict_pairs(P)
    assert sorted(zip(c.tolist(), r.tolist())) == [(1, 0), (1, 2)]


def test_dpo_learns_the_preferences_and_trains_only_the_head(tiny_stack, tmp_path):
    g = torch.Generator().manual_seed(0)
    m, t = 12, 10
    policy = Policy.from_pretrained(tiny_stack["sft"])
    h = torch.randn(m, t, policy.cfg.width, generator=g)
    actions = torch.cat([torch.randint(0, 2, (m, t, 12), generator=g), torch.randint(0, 11, (m, t, 4), generator=g)], -1)
    lengths = torch.randint(3, t + 1, (m,), generator=g)
    prefs = PreferenceSet("x", [Preference(tuple(range(m)), ranking=tuple(range(m)))])  # 0 best
    P = preference_matrix(prefs, torch.arange(m).numpy())
    summary = train_dpo(tiny_stack["sft"], h, actions, lengths, P, tmp_path / "dpo", DPOConfig(steps=60, lr=3e-3))
    rows = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["dpo/loss"] < rows[0]["dpo/loss"] and summary["dpo/accuracy"] > 0.6
    before, after = Policy.from_pretrained(tiny_stack["sft"]).state_dict(), Policy.from_pretrained(tmp_path / "dpo").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)


def test_the_nll_term_adds_the_chosen_per_step_nll_to_the_dpo_loss(tiny_stack, tmp_path):
    g = torch.Generator().manual_seed(1)
    m, t = 6, 8
    width = Policy.from_pretrained(tiny_stack["sft"]).cfg.width
    h = torch.randn(m, t, width, generator=g)
    actions = torch.cat([torch.randint(0, 2, (m, t, 12), generator=g), torch.randint(0, 11, (m, t, 4), generator=g)], -1)
    lengths = torch.randint(3, t + 1, (m,), generator=g)
    P = preference_matrix(PreferenceSet("x", [Preference(tuple(range(m)), ranking=tuple(range(m)))]), torch.arange(m).numpy())

    def first_row(w: float) -> dict:
        train_dpo(tiny_stack["sft"], h, actions, lengths, P, tmp_path / f"w{w}", DPOConfig(steps=1, nll_weight=w))
        return json.loads((tmp_path / f"w{w}" / "metrics.jsonl").read_text().splitlines()[0])

    plain, rpo = first_row(0.0), first_row(0.5)
    assert "dpo/chosen_nll" not in plain and rpo["dpo/chosen_nll"] > 0
    # Same seed, same first batch, same (reference) head: the losses differ by exactly the term.
    assert rpo["dpo/loss"] == pytest.approx(plain["dpo/loss"] + 0.5 * rpo["dpo/chosen_nll"], rel=1e-5)


def test_bad_dpo_config():
    with pytest.raises(ValueError, match="nll_weight"):
        DPOConfig(nll_weight=-1.0)
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0)
    with pytest.raises(ValueError, match="batch_pairs"):
        DPOConfig(batch_pairs=0)
