"""The whole chain on the smoke preset, as a user types it: every stage's output and every figure
of the report exists and holds real, finite numbers; killed mid-way, the same command finishes
the job without redoing finished stages."""

import json
import math
import os
import signal
import subprocess
import time

import pytest

STAGES = ["data_pretrain", "data_finetune", "pretrain", "sft", "scratch", "eval_base", "eval_sft", "eval_scratch",
          "rollouts", "prefs", "reward", "sweep", "pft", "align", "dpo",
          "eval_pft", "eval_align", "eval_deploy", "eval_dpo"]  # fmt: skip


def _cmd(out, *extra):
    return ["agentalign", "pipeline", "--config", "smoke", "--out", str(out), *extra]


def _finite_numbers(x):
    if isinstance(x, float):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _finite_numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _finite_numbers(v)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "run"
    # Start, kill once the SFT stage is done, then run the same command again.
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "sft" / "stage.json").exists():
        time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first_done = {s for s in STAGES if (out / s / "stage.json").exists()}
    r = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, first_done, r.stdout


def test_every_stage_and_figure_exists_with_finite_numbers(smoke_run):
    out, _, stdout = smoke_run
    for s in STAGES:
        marker = json.loads((out / s / "stage.json").read_text())
        assert marker["seconds"] >= 0, s
    results = json.loads((out / "results.json").read_text())
    nums = list(_finite_numbers(results["stages"]))
    assert nums and all(math.isfinite(v) for v in nums)
    for s in ("eval_base", "eval_sft", "eval_scratch", "eval_pft", "eval_align"):
        ev = json.loads((out / s / "eval.json").read_text())
        assert ev["episodes"] == 16 and abs(sum(ev["jump_pads"][p]["fraction"] for p in ev["jump_pads"]) - 1) < 1e-9
        assert (out / s / "heatmap.png").stat().st_size > 1000
    for f in ("report_figures/bc.png", "report_figures/final.png", "report_figures/align.png", "sweep/sweep.png"):
        assert (out / f).stat().st_size > 1000, f
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "The paper's findings" in html
    assert "total" in stdout
    align = json.loads((out / "align" / "stage.json").read_text())["result"]
    assert align["reinforce"]["episodes"] == 16 and "REINFORCE 16 episodes" in stdout
    rest, sharpen = align["rest"], align["sharpen"]  # 2 rounds of 2 starts x 2 samples at T = 1; 2 rounds of 4 at T = 0.3
    assert rest["ranked"] == 8 and rest["rounds"] == 2 and rest["temperature"] == 1.0 and "rest 2 rounds at T = 1" in stdout
    assert sharpen["ranked"] == 8 and sharpen["rounds"] == 2 and sharpen["temperature"] == 0.3
    assert align["online_episodes"] == 32 and "32 online episodes" in stdout  # 16 + 8 + 8
    assert "Then 2 ReST rounds (online ReST" in html and "Then a second ReST step (sharpen)" in html
    rounds = [out / "align" / "model" / step / f"round{i}" for step, i in (("rest", 0), ("rest", 1), ("sharpen", 2), ("sharpen", 3))]
    soups = [d for r in rounds for d in r.glob("soup/seed*")]  # each round's clone a soup of two
    assert len(soups) == 8 and all((d / "model.safetensors").is_file() for d in soups)
    pft = json.loads((out / "pft" / "stage.json").read_text())["result"]  # the stored rollouts, then a grow round of 8
    assert [r["source"] for r in pft["rounds"]] == ["stored", "fresh"] and pft["rounds"][1]["ranked"] == 8
    # The aligned agent again at the deployment temperature, beside (not instead of) T = 1.
    deploy, aligned = (json.loads((out / s / "eval.json").read_text()) for s in ("eval_deploy", "eval_align"))
    assert deploy["config"]["temperature"] == 0.3 and aligned["config"]["temperature"] == 1.0
    assert deploy["episodes"] == 16 and (out / "eval_deploy" / "heatmap.png").stat().st_size > 1000
    assert "sampled at T = 0.3 (deployment)" in html and "eval_deploy" in stdout


def test_rerun_after_kill_redid_no_finished_stage(smoke_run):
    out, first_done, stdout = smoke_run
    assert {"data_pretrain", "pretrain", "sft"} <= first_done
    for s in first_done:
        assert f"{s:<14} done earlier" in stdout, s
    again = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done earlier") == len(STAGES)  # all but the report, a view made again


def test_bad_input_is_refused_before_any_work(smoke_run, tmp_path):
    out, _, _ = smoke_run
    r = subprocess.run(_cmd(out, "--set", "align.reinforce.episodes=24"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "another config" in r.stderr and "--from align" in r.stderr
    r = subprocess.run(_cmd(tmp_path / "x", "--from", "nowhere"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown stage 'nowhere'" in r.stderr
    r = subprocess.run(["agentalign", "pipeline", "--config", "huge", "--out", str(tmp_path / "y")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "unknown pipeline preset 'huge'" in r.stderr
    r = subprocess.run(_cmd(tmp_path / "z", "--set", "sft.stepz=3"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "sft.stepz" in r.stderr
    r = subprocess.run(_cmd(tmp_path / "t", "--set", "deploy.temperature=0"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "deploy: temperature must lie in (0, 1]" in r.stderr
    r = subprocess.run(_cmd(tmp_path / "d", "--set", "pretrain.device=tpu"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "pretrain.device: 'tpu'" in r.stderr
    (tmp_path / "mine.toml").write_text('extends = "smoke"\n[pretrain]\nstepz = 3\n')
    r = subprocess.run(["agentalign", "pipeline", "--config", str(tmp_path / "mine.toml"), "--out", str(tmp_path / "f")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and f"{tmp_path / 'mine.toml'}: unknown config key 'pretrain.stepz'" in r.stderr
    assert not any((tmp_path / d).exists() for d in ("x", "z", "t", "d", "f"))


def test_stage_commands_on_the_smoke_outputs(smoke_run, tmp_path):
    """Each alignment stage as its own command, on what the smoke pipeline left behind."""
    out, _, _ = smoke_run
    store, sft = out / "rollouts" / "store", out / "sft" / "model"

    def run(*args):
        return subprocess.run(["agentalign", *map(str, args)], capture_output=True, text=True, timeout=300)

    r = run("prefs", "synth", "--trajectories", store, "--target", "right", "--out", tmp_path / "p.jsonl", "--train", 12)
    assert r.returncode == 0, r.stderr
    r = run("reward", "train", "--trajectories", store, "--prefs", tmp_path / "p.jsonl", "--policy", sft,
            "--out", tmp_path / "rm", "--set", "max_steps=5", "--set", "ensemble=2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rm_config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert rm_config["target"] == "right" and rm_config["members"] == 2  # align and pft below score with both
    r = run("align", "--policy", sft, "--sft", sft, "--reward", tmp_path / "rm", "--target", "right", "--out", tmp_path / "al",
            "--set", "reinforce.episodes=8", "--set", "reinforce.batch_episodes=4", "--set", "rest.rounds=0",
            "--set", "sharpen.rounds=0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "al" / "model.safetensors").exists()
    r = run("align", "--policy", sft, "--sft", sft, "--reward", tmp_path / "rm", "--target", "right",
            "--out", tmp_path / "bad", "--set", "reinforce.beta=-1")  # fmt: skip
    assert r.returncode == 2 and "beta" in r.stderr and not (tmp_path / "bad").exists()
    r = run("align", "--policy", sft, "--sft", out / "scratch" / "model", "--reward", tmp_path / "rm",
            "--target", "right", "--out", tmp_path / "bad2")  # fmt: skip
    assert r.returncode == 2 and "trained on the embeddings of policy" in r.stderr
    r = run("pft", "--sft", sft, "--reward", tmp_path / "rm", "--trajectories", store, "--prefs", tmp_path / "p.jsonl",
            "--out", tmp_path / "pft", "--set", "rest.clone.steps=2", "--set", "rest.clone.batch_size=4", "--set", "rest.clone.window=8")  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_diagnose_says_whether_a_policy_uses_its_pixels(smoke_run):
    out, _, _ = smoke_run
    r = subprocess.run(["agentalign", "diagnose", str(out / "scratch" / "model"), "--data",
                        str(out / "data_finetune" / "store")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "loss with real frames" in r.stdout and "black frames" in r.stdout


def test_a_stage_folder_is_kept_for_its_own_resume_and_cleared_for_another_config(tmp_path):
    from agentalign.pipeline.runner import _prepare_stage_dir

    d = tmp_path / "pft"
    _prepare_stage_dir(d, "aaa")
    (d / "checkpoint").write_text("half way")
    _prepare_stage_dir(d, "aaa")  # the same stage, interrupted: resume from its checkpoint
    assert (d / "checkpoint").read_text() == "half way"
    _prepare_stage_dir(d, "bbb")  # rerun with another config or inputs: start clean
    assert not (d / "checkpoint").exists() and (d / "stage_started.json").is_file()
    legacy = tmp_path / "sft"
    legacy.mkdir()
    (legacy / "model").write_text("made before stage_started.json existed")
    _prepare_stage_dir(legacy, "ccc")
    assert not (legacy / "model").exists()


def test_a_new_split_or_reward_setting_relabels_and_retrains_without_replaying_rollouts():
    from agentalign.pipeline import Run, load_pipeline_config

    base = Run("unused", load_pipeline_config("smoke", []))
    other = Run("unused", load_pipeline_config("smoke", ["prefs.train=20", "reward.lr=0.01"]))
    assert other.stage_hash("rollouts") == base.stage_hash("rollouts")
    assert other.stage_hash("prefs") != base.stage_hash("prefs")
    assert other.stage_hash("reward") != base.stage_hash("reward")
    assert other.stage_hash("align") != base.stage_hash("align")  # its inputs changed


def test_seed_seeds_every_stage_and_a_stage_seed_of_its_own_wins():
    from agentalign.pipeline import Run, load_pipeline_config

    seeded = load_pipeline_config("smoke", ["seed=2"])
    assert [getattr(seeded, s).seed for s in ("data_pretrain", "data_finetune", "pretrain", "sft", "scratch",
                                                 "reward", "pft", "align", "dpo")] == [2, 3, 2, 2, 2, 2, 2, 2, 2]  # fmt: skip
    # A replicate of the stages from the reward model on, on the very same agents and preferences
    # (a --set align.seed was once silently replaced by the pipeline's seed).
    later = ["reward.seed=3", "pft.seed=3", "align.seed=3", "dpo.seed=3"]
    base, rep = Run("unused", load_pipeline_config("smoke", [])), Run("unused", load_pipeline_config("smoke", later))
    assert [rep.cfg.reward.seed, rep.cfg.pft.seed, rep.cfg.align.seed, rep.cfg.dpo.seed] == [3, 3, 3, 3]
    assert all(rep.stage_hash(s) == base.stage_hash(s) for s in ("sft", "rollouts", "prefs"))
    assert all(rep.stage_hash(s) != base.stage_hash(s) for s in ("reward", "pft", "align", "dpo"))


WIDE = ["model.width=256", "model.head_hidden=256", "model.stem_channels=16", "pretrain.lr=3e-4", "scratch.lr=3e-4",
        "pft.rest.clone.lr=3e-4", "align.rest.clone.lr=3e-4", "align.sharpen.clone.lr=3e-4", "sweep.enabled=false"]  # fmt: skip


def test_the_wide_preset_is_the_cpu_preset_with_what_it_names_changed():
    from agentalign.pipeline import Run, load_pipeline_config

    wide, cpu = load_pipeline_config("cpu-wide"), load_pipeline_config("cpu")
    # Table by table: the [model] and [pft.rest.clone] keys it leaves out keep cpu.toml's values.
    assert wide == load_pipeline_config("cpu", WIDE)
    assert wide.model.prev_action is False and wide.pft.rest.clone.first_window_share == cpu.pft.rest.clone.first_window_share == 0.5
    assert (wide.model.width, wide.pretrain.lr, wide.sft.lr) == (256, 3e-4, cpu.sft.lr)
    # So run folders made with the equivalent --set keys resume under the preset's name.
    assert Run("unused", wide).stage_hash("align") == Run("unused", load_pipeline_config("cpu", WIDE)).stage_hash("align")


def test_a_config_file_extends_a_preset_or_another_file(tmp_path):
    from agentalign.config import ConfigError
    from agentalign.pipeline import load_pipeline_config

    (tmp_path / "mine.toml").write_text('extends = "smoke"\ntarget = "right"\n[pretrain]\nsteps = 3\n')
    (tmp_path / "more.toml").write_text('extends = "mine.toml"\n[pretrain]\nlr = 0.01\n')
    cfg = load_pipeline_config(tmp_path / "more.toml")
    assert cfg == load_pipeline_config("smoke", ["target=right", "pretrain.steps=3", "pretrain.lr=0.01"])
    assert cfg.pretrain.batch_size == load_pipeline_config("smoke").pretrain.batch_size  # smoke's, not the default
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="a.toml: extends itself through a.toml -> b.toml -> a.toml"):
        load_pipeline_config(tmp_path / "a.toml")
    (tmp_path / "n.toml").write_text("extends = 3\n")
    with pytest.raises(ConfigError, match="extends must be a preset name or a .toml path, got 3"):
        load_pipeline_config(tmp_path / "n.toml")
    (tmp_path / "u.toml").write_text('extends = "huge"\n')
    with pytest.raises(ConfigError, match="u.toml: extends: unknown pipeline preset 'huge'"):
        load_pipeline_config(tmp_path / "u.toml")


def test_the_deployment_evaluation_can_be_turned_off():
    from agentalign.pipeline import Run, load_pipeline_config

    names = lambda *o: [s.name for s in Run("unused", load_pipeline_config("smoke", list(o))).stages]  # noqa: E731
    assert "eval_deploy" in names() and "eval_deploy" not in names("deploy.temperature=none")
    assert [n for n in names("deploy.temperature=none") if n != "report"] == [n for n in STAGES if n != "eval_deploy"]


def test_the_align_line_names_what_aligned_the_agent():
    from agentalign.pipeline.plan import _align_line

    rest = {"kept": 396, "ranked": 1584, "temperature": 1.0, "rounds": 4, "kept_pads": {"left": 390, "middle": 6}}
    sharp = {"kept": 400, "ranked": 800, "temperature": 0.3, "rounds": 1, "kept_pads": {"left": 400}}
    assert _align_line("left", {"rest": rest, "sharpen": sharp, "online_episodes": 2384}) == \
        "rest 4 rounds at T = 1: cloned 396 of 1584 (left 390); sharpen 1 round at T = 0.3: cloned 400 of 800 (left 400); 2384 online episodes"
    reinforce = {"episodes": 1600, "final_success": 0.825}
    assert _align_line("right", {"reinforce": reinforce, "online_episodes": 1600}).startswith("REINFORCE 1600 episodes (right 82.5%")


def test_removed_keys_get_the_unknown_key_error_and_config_keys_lists_every_key():
    from agentalign.config import ConfigError, config_keys
    from agentalign.pipeline import load_pipeline_config

    for key in ("align.polish_bc.lr=1", "pft.bc.lr=1", "align.target=right", "pretrain.model.width=8", "align.spawn_priority=1",
                "refresh.enabled=true", "reward.head=sum", "pft.rest.clone.seed=3", "data_pretrain.size=32"):
        with pytest.raises(ConfigError, match="unknown config key"):
            load_pipeline_config("smoke", [key])
    keys = [k for k, _, _ in config_keys(load_pipeline_config("cpu"))]
    assert len(keys) == len(set(keys)) and "align.rest.clone.lr" in keys and "pft.rest.keep" in keys
    r = subprocess.run(["agentalign", "config", "keys", "--config", "cpu"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"{len(keys)} keys" in r.stdout and "align.sharpen.temperature" in r.stdout
