"""Preferences over trajectories: the record format every labeller writes, the synthetic
labeller of the paper's section 3.4, and comparison sets built from all pairs of subsets."""

from agentalign.prefs.comparisons import all_pairs, sweep_subset_sizes
from agentalign.prefs.labellers import Labeller, SyntheticLabeller, TrajectoryInfo
from agentalign.prefs.records import Preference, PreferenceSet

__all__ = [
    "Labeller",
    "Preference",
    "PreferenceSet",
    "SyntheticLabeller",
    "TrajectoryInfo",
    "all_pairs",
    "sweep_subset_sizes",
]
