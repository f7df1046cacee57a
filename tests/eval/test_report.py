"""The report reads a run folder (results.json and the stages' files), never the pipeline: a fake
run folder here stands in for a pipeline run."""

import json
import subprocess
import sys

import pytest

from agentalign.eval import pad_distribution
from agentalign.eval.report import online_episodes, write_report


def _eval(left: int, none: int, other: int = 0) -> dict:
    """An evaluation stage's result as `evaluate` returns it (the fields the report reads)."""
    return {**pad_distribution(["left"] * left + ["none"] * none + ["middle"] * other), "stuck": {"fraction": 0.05}}


def _write_metrics(directory, rows) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps({"step": k, **r}) + "\n" for k, r in enumerate(rows)))


def _align_rows(batches: int, rounds: int, per_round: int = 8) -> list[dict]:
    """REINFORCE's per-batch rows, then one row per ReST round (`align/rest_round` set)."""
    rows = [{"align/episodes": 4 * (k + 1), "align/success": 0.3 + 0.05 * k, "align/reward_return": 0.4 + 0.02 * k,
             "align/pad_left": 0.3 + 0.05 * k} for k in range(batches)]  # fmt: skip
    done = 4 * batches
    for r in range(rounds):
        done += per_round
        rows.append({"align/episodes": done, "align/rest_round": r + 1, "align/success": 0.8 + 0.05 * r,
                     "align/reward_return": 0.7 + 0.05 * r})  # fmt: skip
    return rows


REST = {"rounds": 2, "ranked": 16, "kept": 4, "kept_pads": {"left": 4}, "played_pads": {"left": 13, "none": 3},
        "temperature": 1.0, "mean_score_all": 0.7, "by_round": []}  # fmt: skip
SHARPEN = {**REST, "rounds": 1, "ranked": 8, "kept": 2, "temperature": 0.3}


@pytest.fixture
def run_dir(tmp_path):
    """A finished run aligned to the left pad, with a reproduce plan of one variant (two seeds) and two sizes."""
    out = tmp_path / "run"
    align = {"target": "left", "online_episodes": 48, "seconds": 3.0,
             "reinforce": {"episodes": 24, "updates": 6, "dropped": 0, "final_success": 0.55},
             "rest": REST, "sharpen": SHARPEN}  # fmt: skip
    stages = {
        "eval_base": _eval(2, 8, 6), "eval_sft": _eval(5, 2, 9), "eval_scratch": _eval(4, 4, 8),
        "eval_pft": _eval(8, 2, 6), "eval_align": _eval(15, 1), "eval_deploy": _eval(16, 0),
        "eval_dpo": {"skipped": "DPO did not run: no pairs"},
        "reward": {"reward/accuracy": 0.93}, "align": align,
        "pft": {"rounds": [{"round": 0, "ranked": 20, "kept": 5, "kept_pads": {"left": 5}, "source": "stored"}],
                "kept": 5, "kept_pads": {"left": 5}},
        "align_left_large_pft_s1": {**align, "online_episodes": 40}, "eval_align_left_large_pft_s1": _eval(14, 2),
        "size_tiny_eval_sft": _eval(4, 6, 6), "size_tiny_eval_scratch": _eval(2, 10, 4),
    }  # fmt: skip
    plan = {"variants": [{"target": "left", "comparisons": "large", "pft": True, "label": "large set, PFT + RL",
                          "runs": [["align", "eval_align"], ["align_left_large_pft_s1", "eval_align_left_large_pft_s1"]]}],
            "sizes": [{"preset": "tiny", "parameters": 123456,
                       "stages": {r: f"size_tiny_{r}" for r in ("pretrain", "sft", "scratch", "eval_sft", "eval_scratch")}},
                      {"preset": "cpu", "parameters": 2345678,
                       "stages": {r: r for r in ("pretrain", "sft", "scratch", "eval_sft", "eval_scratch")}}]}  # fmt: skip
    seconds = {name: 1.5 for name in stages}
    results = {"target": "left", "deploy_temperature": 0.3, "stages": stages, "seconds": seconds,
               "total_seconds": sum(seconds.values()), "reproduce": plan}  # fmt: skip
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    _write_metrics(out / "align" / "model", _align_rows(6, 2))
    _write_metrics(out / "align_left_large_pft_s1" / "model", _align_rows(6, 2))
    sweep = [{"encoder": enc, "comparisons": n, "seed": s, "reward/accuracy": acc + 0.01 * s}
             for enc, acc in (("agent", 0.9), ("random", 0.6)) for n in (10, 100, 400) for s in (0, 1)]  # fmt: skip
    (out / "sweep").mkdir()
    (out / "sweep" / "sweep.json").write_text(json.dumps({"rows": sweep}))
    (out / "pipeline.json").write_text(json.dumps({"config": {"target": "left"}, "machine": {}}))
    return out


def test_report_writes_html_and_adds_claims_to_results(run_dir):
    before = json.loads((run_dir / "results.json").read_text())
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert {k: results[k] for k in before} == json.loads(json.dumps(before))  # the runner's keys kept as they were
    claims = {c["quantity"]: c for c in results["claims"]}
    aligned = "Aligned (PFT + REINFORCE + 2 ReST rounds + sharpen, 48 online episodes): left pad"
    assert claims[aligned]["ours"] == pytest.approx(15 / 16) and claims[aligned]["paper"].startswith("≈99 %")
    assert claims["Base agent fails (no pad)"]["ours"] == pytest.approx(0.5)
    assert claims["Reward model, agent encoder, ~100 comparisons"]["ours"] == pytest.approx(0.905)
    assert claims["Reward model, random encoder, largest set"]["ours"] == pytest.approx(0.605)
    assert claims["Main reward model, held-out accuracy"]["ours"] == 0.93
    assert claims["Aligned, sampled at T = 0.3 (deployment): left pad"]["ours"] == 1.0
    assert claims["DPO (offline): left pad"]["ours"] is None  # skipped: a dash, not a number
    for quantity in (aligned, "The paper's findings", "Then 2 ReST rounds (online ReST", "each round's best 2",
                     "Then a second ReST step (sharpen): 8 new episodes sampled at T = 0.3",
                     "beyond REINFORCE's and the rounds' own", "no sign of reward hacking",
                     "Alignment variants (figures 8/9)", "Model sizes (figure 12)", "123,456"):  # fmt: skip
        assert quantity in page, quantity
    assert "polish" not in page and "spawn priority" not in page
    # reproduce: the plan stays as given, the figures come beside it.
    figures = results["reproduce_figures"]
    curve = figures["curves"]["left"]["large set, PFT + RL"]
    assert curve["seeds"] == 2 and curve["final"]["episodes"] == 44.0  # the mean of 48 and 40 online episodes
    assert figures["final"]["left"]["large set, PFT + RL"]["jump_pads"]["left"]["fraction"] == pytest.approx(29 / 32)
    assert [(s["preset"], s["parameters"]) for s in figures["sizes"]] == [("tiny", 123456), ("cpu", 2345678)]
    for f in ("bc.png", "final.png", "align.png", "reproduce_curves.png", "reproduce_final_left.png", "reproduce_sizes.png"):
        assert (run_dir / "report_figures" / f).stat().st_size > 1000, f


def test_a_second_report_gives_the_same_results(run_dir):
    write_report(run_dir)
    first = (run_dir / "results.json").read_text()
    write_report(run_dir)
    assert (run_dir / "results.json").read_text() == first
    assert "reproduce_figures" not in json.loads(first)["reproduce"]  # replaced, not nested


def test_rest_alone_without_reproduce_or_sweep(tmp_path):
    """No REINFORCE (the ReST rounds aligned the agent), no reproduce plan, no sweep, no deploy row."""
    out = tmp_path / "run"
    out.mkdir()
    stages = {"eval_pft": _eval(6, 4, 6), "eval_align": _eval(12, 4),
              "align": {"target": "left", "online_episodes": 16, "seconds": 1.0, "rest": REST}}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"target": "left", "deploy_temperature": None, "stages": stages,
                                                  "seconds": {"align": 1.0}, "total_seconds": 1.0, "reproduce": None}))  # fmt: skip
    _write_metrics(out / "align" / "model", _align_rows(0, 2))
    page = write_report(out).read_text()
    results = json.loads((out / "results.json").read_text())
    assert "reproduce_figures" not in results and results["reproduce"] is None
    claims = {c["quantity"]: c["ours"] for c in results["claims"]}
    assert claims["Aligned (PFT + 2 ReST rounds, 16 online episodes): left pad"] == 0.75
    assert claims["Reward model, agent encoder, largest set"] is None
    assert "No REINFORCE: 2 ReST rounds" in page and "first vs last round" in page
    assert "deployment" not in page and "Alignment variants" not in page


def test_online_episodes_and_a_missing_results_file(tmp_path):
    assert online_episodes({"online_episodes": 2384, "reinforce": {"episodes": 1}}) == 2384
    assert online_episodes({"reinforce": {"episodes": 96}, "rest": {"ranked": 32}, "sharpen": {"ranked": 8}}) == 136
    assert online_episodes({}) == 0
    with pytest.raises(FileNotFoundError, match="results.json does not exist"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="no 'target' or 'stages'"):
        write_report(tmp_path)


def test_the_report_does_not_import_the_pipeline():
    code = "import sys, agentalign.eval.report; print(sorted(m for m in sys.modules if m.startswith('agentalign.pipeline')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
