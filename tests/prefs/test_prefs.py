import numpy as np
import pytest

from agentalign.prefs import Preference, PreferenceSet, SyntheticLabeller, TrajectoryInfo, all_pairs, sweep_subset_sizes
from agentalign.prefs.comparisons import subset_size_for


def test_synthetic_labeller_orders_as_section_3_4():
    lab = SyntheticLabeller("left")
    t = lambda i, pad, n: TrajectoryInfo(i, pad, n)  # noqa: E731
    assert lab.compare(t(0, "left", 90), t(1, "middle", 40)) == "A"  # target beats another pad
    assert lab.compare(t(0, "none", 30), t(1, "right", 99)) == "B"  # any pad beats none
    assert lab.compare(t(0, "left", 50), t(1, "left", 45)) == "B"  # shorter wins within a category
    assert lab.compare(t(0, "middle", 50), t(1, "right", 50)) == "tie"
    infos = [t(0, "none", 100), t(1, "middle", 60), t(2, "left", 70), t(3, "left", 50), t(4, "right", 60)]
    s = lab.scores(infos)
    for a in infos:
        for b in infos:
            expect = lab.compare(a, b)
            got = "A" if s[a.index] > s[b.index] else ("B" if s[a.index] < s[b.index] else "tie")
            assert got == expect
    # The order as a return: 1 / 0.5 / 0 by category, less 0.001 a step.
    assert [lab.reward(a.jump_pad, a.length) for a in infos] == pytest.approx([-0.1, 0.44, 0.93, 0.95, 0.44])
    r = [lab.reward(a.jump_pad, a.length) for a in infos]
    assert all((r[a.index] > r[b.index]) == (s[a.index] > s[b.index]) for a in infos for b in infos)
    with pytest.raises(ValueError, match="unknown jump pad 'top'"):
        SyntheticLabeller("top")


def test_rankings_imply_all_pairs_and_round_trip(tmp_path):
    r = Preference(ids=(7, 3, 9), ranking=(0, 1, 1), labeller="synthetic:left")
    assert sorted(r.pairs()) == [(3, 9, 0.5), (7, 3, 1.0), (7, 9, 1.0)]
    s = PreferenceSet("abc", [r, Preference((1, 2), "B", labeller="person:ann")], meta={"target": "left"})
    s.save(tmp_path / "p.jsonl")
    back = PreferenceSet.load(tmp_path / "p.jsonl")
    assert back.dataset_id == "abc" and back.meta == {"target": "left"}
    assert back.prefs == s.prefs
    back.check_ids(10)
    with pytest.raises(ValueError, match=r"names trajectories \[9\]"):
        back.check_ids(8)
    with pytest.raises(ValueError, match="tie"):
        back.check_ids(10, allow_ties=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ids": (1,), "label": "A"}, "at least 2"),
        ({"ids": (1, 1), "label": "A"}, "itself"),
        ({"ids": (1, 2), "label": "C"}, "label must be one of"),
        ({"ids": (1, 2, 3), "label": "A"}, "need a ranking"),
        ({"ids": (1, 2), "ranking": (0,)}, "rank"),
    ],
)
def test_bad_records(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preference(**kwargs)


def test_comparison_sets_sweep():
    pairs = all_pairs(np.array([4, 5, 6, 7]))
    assert pairs.tolist() == [[4, 5], [4, 6], [4, 7], [5, 6], [5, 7], [6, 7]]
    assert subset_size_for(45) == 10 and subset_size_for(46) == 11
    sizes = sweep_subset_sizes(1000, points=6)
    counts = [m * (m - 1) // 2 for m in sizes]
    assert 45 <= counts[0] <= 60 and sizes[-1] == 1000 and counts == sorted(counts)
