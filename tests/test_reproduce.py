"""`agentalign pipeline --reproduce` on the smoke preset (2 seeds, both pads, both comparison sets,
with and without preference fine-tuning, a second model size). Added to a finished default run it
keeps every main stage, makes each variant's stages, and a report with the alignment curves
(figures 8/9), the final distributions (appendix I) and failure rates by model size (figure 12),
all finite numbers; run again, it redoes nothing."""

import json
import math
import re
import subprocess

import pytest
from test_pipeline import STAGES, _cmd, _finite_numbers

from agentalign.pipeline import Run, load_pipeline_config, reproduce_plan

REPRODUCE = ["reproduce.enabled=true"]


@pytest.fixture(scope="module")
def reproduce_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "run"
    # The default run first, as a user would have it: --reproduce must build on it, not redo it.
    r = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run(_cmd(out, "--reproduce"), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def _all_finite(x) -> bool:
    nums = list(_finite_numbers(x))
    return bool(nums) and all(math.isfinite(v) for v in nums)


def test_the_default_run_is_untouched_by_the_reproduce_settings(tmp_path):
    plain, full = load_pipeline_config("smoke"), load_pipeline_config("smoke", REPRODUCE)
    a, b = Run(tmp_path, plain), Run(tmp_path, full)
    assert [s.name for s in a.stages] == STAGES + ["report"]
    assert all(a.stage_hash(s) == b.stage_hash(s) for s in STAGES)
    # The main run's own stages stand in for the variant they compute (left, large set, PFT, seed 0).
    added = {s.name for s in b.stages} - set(STAGES)
    assert "align_left_large_pft_s0" not in added and {"align_left_large_pft_s1", "prefs_right", "reward_left_small",
                                                       "pft_right_large", "size_cpu_pretrain"} <= added  # fmt: skip
    assert not any(name.startswith("size_tiny") for name in added)  # tiny is the smoke run's own model


def test_every_variant_and_figure_exists_with_finite_numbers(reproduce_run):
    out, _ = reproduce_run
    cfg = load_pipeline_config("smoke", REPRODUCE)
    variants, sizes = reproduce_plan(cfg)
    assert len(variants) == 2 * 2 * 2 and all(len(v.runs) == 2 for v in variants)
    for s in Run(out, cfg).stages:
        assert (out / s.name / "stage.json").is_file(), s.name
    for v in variants:
        for align, evaluation in v.runs:
            assert (out / align / "model" / "metrics.jsonl").stat().st_size > 0, align
            ev = json.loads((out / evaluation / "eval.json").read_text())
            assert ev["episodes"] == (16 if evaluation == "eval_align" else 8), evaluation
    results = json.loads((out / "results.json").read_text())["reproduce_figures"]
    for target in ("left", "right"):
        for label in ("small set, PFT + RL", "small set, RL only", "large set, PFT + RL", "large set, RL only"):
            curve, final = results["curves"][target][label], results["final"][target][label]
            assert curve["seeds"] == final["seeds"] == 2
            assert len(curve["episodes"]) == len(curve["mean"]) == len(curve["stderr"]) >= 1
            assert _all_finite(curve) and _all_finite(final), (target, label)
            # The final evaluation on the curve, past REINFORCE's 16 episodes: the smoke ReST rounds and sharpen played 8 each.
            assert curve["final"] == {"episodes": 32.0, "mean": final["jump_pads"][target]["fraction"],
                                      "stderr": final["jump_pads"][target]["stderr"]}  # fmt: skip
            assert abs(sum(final["jump_pads"][p]["fraction"] for p in final["jump_pads"]) - 1) < 1e-9
    assert [row["preset"] for row in results["sizes"]] == [s.preset for s in sizes] == ["tiny", "cpu"]
    assert _all_finite(results["sizes"]) and results["sizes"][0]["parameters"] < results["sizes"][1]["parameters"]
    for f in ("reproduce_curves.png", "reproduce_final_left.png", "reproduce_final_right.png", "reproduce_sizes.png"):
        assert (out / "report_figures" / f).stat().st_size > 1000, f
    html = (out / "report.html").read_text()
    assert "Alignment variants (figures 8/9)" in html and "Model sizes (figure 12)" in html
    assert html.count("data:image/png;base64") >= 4 + 4  # the default report's figures and the four above


def test_reproduce_kept_the_finished_run_and_a_rerun_redoes_nothing(reproduce_run):
    out, stdout = reproduce_run
    for s in STAGES:
        assert re.search(rf"\] {s} +done earlier", stdout), s
    n = len(Run(out, load_pipeline_config("smoke", REPRODUCE)).stages)
    again = subprocess.run(_cmd(out, "--reproduce"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done earlier") == n - 1  # all but the report


def test_bad_reproduce_settings_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"reproduce: targets: unknown jump pad 'up'"):
        load_pipeline_config("smoke", REPRODUCE + ["reproduce.targets=left,up"])
    with pytest.raises(ValueError, match=r"reproduce.small_trajectories \(12\) must lie in 2..11"):
        load_pipeline_config("smoke", REPRODUCE + ["reproduce.small_trajectories=12"])
    with pytest.raises(ValueError, match=r"reproduce: model_sizes: unknown model preset 'huge'"):
        load_pipeline_config("smoke", ["reproduce.model_sizes=tiny,huge"])
    r = subprocess.run(_cmd(tmp_path / "x", "--reproduce", "--set", "reproduce.targets=up"),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "targets" in r.stderr and "'up'" in r.stderr
    assert not (tmp_path / "x").exists()
