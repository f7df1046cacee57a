"""The reproduction report: the paper's figures regenerated from one pipeline run, each beside
the paper's number for the same quantity, in one self-contained HTML file (images and videos
inlined).

    from agentalign.eval.report import write_report
    write_report(Path("runs/cpu"))   # -> runs/cpu/report.html

The report reads the run folder only, never the pipeline (which runs it as its last stage):

  RUN/results.json, written by the runner before the report stage: the target pad, the
    deployment temperature, each finished stage's result and wall time, and with `reproduce` the
    alignment variants' and model sizes' stage names (and each size's parameter count);
  the stages' files: align/model/metrics.jsonl (and each alignment variant's), sweep/sweep.json
    and sweep.png, eval_*/heatmap.png and videos, pipeline.json (the configuration shown).

It writes report.html and report_figures/, then rewrites results.json with what it derived added:
"claims" (the paper's findings, ours beside them) and, with `reproduce`, "reproduce_figures"
(figures 8/9 over the variants and seeds, their final distributions (appendix I) and the model
sizes (figure 12)). Derived keys are replaced, never nested: a second report gives the same file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from agentalign.io import atomic_write_json, atomic_write_text, read_metrics

# The paper's numbers for the same quantities (percent).
PAPER = {
    "base": {"none": 43.0, "left": 12.0, "middle": 37.0, "right": 7.5},  # figure 3
    "sft": {"none": 11.0, "left": 32.0, "middle": 33.0, "right": 23.0},  # figure 5 (pre-trained + fine-tuned)
    "scratch": {"none": 20.0},  # figure 5, trained on the curated set only
    "reward_agent_100": 90.0,  # figure 7: agent encoder above 90 % at ~100 comparisons ...
    "reward_agent_largest": 100.0,  # ... and near 100 % at the most
    "align_left": 99.0,  # figures 8, appendix I: after 9,600 online episodes with preference FT
    "align_right": 100.0,  # figure 9, appendix I
    "align_left_rl_only": 90.0,  # appendix H: ~90 % left after a day without preference FT ...
    "align_right_rl_only": 40.0,  # ... and ~40 % right (§3.6.2, figure 9)
}
PADS = ("none", "left", "middle", "right")
DERIVED = ("claims", "reproduce_figures")  # the keys the report adds to results.json


def _img(path: Path) -> str:
    if not path.is_file():
        return f"<p class=missing>missing: {html.escape(str(path))}</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _video(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<video controls loop muted src="data:video/mp4;base64,{data}"></video>'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(results: dict[str, dict], paper: dict[str, dict], path: Path, title: str) -> Path:
    """Grouped bars of jump pads reached (figures 3-5 and appendix I), paper values as black marks."""
    plt = _plt()
    names = [n for n in results if results[n]]
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=120)
    w = 0.8 / max(len(names), 1)
    x = np.arange(len(PADS))
    for k, name in enumerate(names):
        jp = results[name]["jump_pads"]
        vals = [100 * jp[p]["fraction"] for p in PADS]
        errs = [100 * jp[p]["stderr"] for p in PADS]
        bars = ax.bar(x + (k - (len(names) - 1) / 2) * w, vals, w, yerr=errs, label=name, capsize=2)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.0f}", ha="center", fontsize=7)
        for j, p in enumerate(PADS):
            if name in paper and p in paper[name]:
                ax.plot([x[j] + (k - (len(names) - 1) / 2) * w], [paper[name][p]], "k_", ms=14, mew=2)
    ax.set_xticks(x, PADS)
    ax.set_ylabel("% of episodes")
    ax.set_ylim(0, 105)
    ax.set_title(title + "  (black: the paper)" if any(n in paper for n in names) else title)
    if names:  # an empty panel (no evaluation finished) has nothing to label
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _moving_mean(x: np.ndarray, k: int) -> np.ndarray:
    return np.convolve(x, np.ones(k) / k, mode="valid")


def online_episodes(align: dict) -> int:
    """Online episodes an alignment stage played: its `online_episodes`, or (a result without it)
    REINFORCE's episodes plus those the ReST rounds and the sharpen ranked."""
    if "online_episodes" in align:
        return int(align["online_episodes"])
    played = int((align.get("reinforce") or {}).get("episodes", 0))
    return played + sum(int((align.get(k) or {}).get("ranked", 0)) for k in ("rest", "sharpen"))


def _eval_point(ax, x: float, fraction: float, stderr: float, colour, label: str | None, marker: str) -> None:
    """An evaluation's target-pad success (T = 1, as the batches are sampled) as a point on a curve."""
    ax.errorbar([x], [100 * fraction], yerr=[100 * stderr], fmt=marker, color=colour, ms=6, capsize=3, label=label)


def _window(rows: int, window: int) -> int:
    """The moving mean's width: `window` rows, but at least five points on the curve, so a run of a
    few rows (ReST rounds alone, a smoke run) is drawn round by round rather than as one point."""
    return max(1, min(window, rows // 5))


def plot_alignment(metrics: list[dict], target: str, path: Path, window: int = 10,
                   points: tuple[tuple[float, float, float, str], ...] = ()) -> Path:  # fmt: skip
    """Figures 8/9: target-pad success during online alignment against episodes, and the reward
    model's return beside it (a rising return with flat success would be reward hacking).
    `points` (episodes, fraction, stderr, label): evaluations drawn on the curve, e.g. the starting
    agent at 0 and the final agent after the ReST steps at its online-episode count."""
    plt = _plt()
    eps = np.array([m["align/episodes"] for m in metrics])
    succ = np.array([m["align/success"] for m in metrics])
    ret = np.array([m.get("align/reward_return", np.nan) for m in metrics])
    k = _window(len(succ), window)
    smooth = _moving_mean(succ, k)
    # Standard error of the moving mean over the window's batches.
    se = np.array([succ[i : i + k].std() / np.sqrt(k) for i in range(len(smooth))])
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=120)
    xe = eps[k - 1 :]
    ax.plot(xe, 100 * smooth, color="tab:blue", label=f"{target} success (moving mean of {k} batches)")
    ax.fill_between(xe, 100 * (smooth - se), 100 * (smooth + se), color="tab:blue", alpha=0.2)
    for (x, f, e, label), marker in zip(points, "sDv^"):
        _eval_point(ax, x, f, e, "tab:blue", label, marker)
    ax.set_xlabel("online episodes")
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 101)
    ax2 = ax.twinx()
    ax2.plot(eps, ret, color="tab:orange", alpha=0.6, lw=1, label="reward-model return")
    ax2.set_ylabel("normalised reward")
    ax2.set_ylim(0, 1.01)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def alignment_curve(per_seed: list[list[dict]], window: int = 10) -> dict:
    """One line of figures 8/9: each seed's target success, a moving mean over `window` batches
    (as plot_alignment), then the mean and standard error over seeds at each episode count."""
    n = min(len(m) for m in per_seed)  # seeds share one schedule; a shorter one would cut the rest
    k = _window(n, window)
    smooth = np.array([_moving_mean(np.array([row["align/success"] for row in m[:n]]), k) for m in per_seed])
    se = smooth.std(0, ddof=1) / np.sqrt(len(smooth)) if len(smooth) > 1 else np.full(smooth.shape[1], np.nan)
    return {"episodes": [float(m["align/episodes"]) for m in per_seed[0][k - 1 : n]], "mean": smooth.mean(0).tolist(),
            "stderr": se.tolist(), "seeds": len(per_seed), "window": k}  # fmt: skip


def mean_distribution(evals: list[dict]) -> dict:
    """Appendix I for one variant: each pad's fraction, mean over seeds' evaluations, with the
    standard error over seeds (a single seed keeps its evaluation's own binomial error)."""
    pads = {}
    for p in PADS:
        f = np.array([e["jump_pads"][p]["fraction"] for e in evals])
        se = f.std(ddof=1) / np.sqrt(len(f)) if len(f) > 1 else evals[0]["jump_pads"][p]["stderr"]
        pads[p] = {"fraction": float(f.mean()), "stderr": float(se)}
    return {"jump_pads": pads, "seeds": len(evals)}


def plot_alignment_curves(curves: dict[str, dict[str, dict]], path: Path) -> Path:
    """Figures 8/9: a panel per target pad, a line per variant (mean over seeds, ±1 SE shaded).
    As the paper: blue with preference fine-tuning, darker for the larger comparison set. A curve's
    "final" (episodes, mean, stderr over seeds), when there, is its final evaluation: a diamond."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.6), dpi=120, squeeze=False)
    for ax, (target, lines) in zip(axes[0], curves.items()):
        for label, c in lines.items():
            cmap = plt.cm.Blues if "PFT" in label else plt.cm.Oranges
            colour = cmap(0.9 if label.startswith("large") else 0.55)
            x, m, se = np.array(c["episodes"]), 100 * np.array(c["mean"]), 100 * np.array(c["stderr"], dtype=float)
            ax.plot(x, m, color=colour, label=f"{label} ({c['seeds']} seeds)", marker="o" if len(x) < 5 else None)
            if np.isfinite(se).all():
                ax.fill_between(x, m - se, m + se, color=colour, alpha=0.2)
            if "final" in c:  # the final agents' evaluation, past REINFORCE's last batch when ReST steps followed
                f = c["final"]
                _eval_point(ax, f["episodes"], f["mean"], f["stderr"], colour, None, "D")
        ax.set_title(f"{target} jump pad")
        ax.set_xlabel("online episodes")
        ax.set_ylabel("success (%)")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _paper_alignment(target: str, comparisons: str, pft: bool) -> str:
    """What the paper reports for an alignment variant's final target-pad success."""
    value = PAPER.get(f"align_{target}" + ("" if pft else "_rl_only"))
    if value is None:
        return "not in the paper"
    text = f"≈{value:.0f} % after 9,600 episodes"
    return text if comparisons == "large" else f"below {text} (figs. 8/9: fewer comparisons align less well)"


def _mean_se(x: dict | None) -> str:
    return "—" if x is None else f"{100 * x['fraction']:.1f} ± {100 * x['stderr']:.1f}%"


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}%"


def _temperature(t: float | None) -> str:
    return "?" if t is None else f"{t:g}"


# ---- what the stages' results say ----------------------------------------------------------------


def _evaluated(res: dict, stage: str) -> dict | None:
    """An evaluation stage's result, when it ran (a skipped one, e.g. DPO's, has no jump pads)."""
    r = res.get(stage)
    return r if r and "jump_pads" in r else None


def _frac(res: dict, stage: str, pad: str) -> float | None:
    r = _evaluated(res, stage)
    return r["jump_pads"][pad]["fraction"] if r else None


def _pinned(res: dict, stage: str) -> float | None:
    """Timeouts pinned against a wall (eval.metrics.stuck)."""
    return (res.get(stage) or {}).get("stuck", {}).get("fraction")


def _sweep_rows(out: Path) -> list[dict]:
    path = out / "sweep" / "sweep.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def _sweep_accuracy(rows: list[dict], encoder: str, which: str) -> float | None:
    """Figure 7: an encoder's mean held-out accuracy at the largest comparison set ("largest"), or
    at the one nearest 100 comparisons ("100")."""
    sel = [r for r in rows if r["encoder"] == encoder and r["reward/accuracy"] is not None]
    if not sel:
        return None
    xs = sorted({r["comparisons"] for r in sel})
    x = xs[-1] if which == "largest" else min(xs, key=lambda c: abs(np.log(c / 100)))
    return float(np.mean([r["reward/accuracy"] for r in sel if r["comparisons"] == x]))


def _alignment_steps(align: dict) -> str:
    """What aligned the agent, e.g. "PFT + REINFORCE + 4 ReST rounds + sharpen"."""
    rest = align.get("rest")
    steps = [*(["REINFORCE"] if align.get("reinforce") else []),
             *([f"{rest.get('rounds', 1)} ReST rounds"] if rest else []),
             *(["sharpen"] if align.get("sharpen") else [])]  # fmt: skip
    return " + ".join(["PFT", *steps])


def _claims(res: dict, target: str, sweep: list[dict], deploy_t: float | None) -> list[tuple]:
    """The paper's findings, ours beside them: (quantity, ours, the paper's, where in the paper)."""
    align = res.get("align") or {}
    paper_align = PAPER.get(f"align_{target}", 99.0)
    sft_pinned = _pinned(res, "eval_sft")
    rows = [
        ("Base agent fails (no pad)", _frac(res, "eval_base", "none"), "43 %", "fig. 3"),
        ("Base agent, middle pad (the most)", _frac(res, "eval_base", "middle"), "37 %", "fig. 3"),
        ("Pre-trained + SFT fails", _frac(res, "eval_sft", "none"), "11 %", "fig. 5"),
        ("Scratch (curated only) fails", _frac(res, "eval_scratch", "none"), "~20 %", "fig. 5"),
        ("Reward model, agent encoder, ~100 comparisons", _sweep_accuracy(sweep, "agent", "100"), "> 90 %", "fig. 7"),
        ("Reward model, random encoder, ~100 comparisons", _sweep_accuracy(sweep, "random", "100"), "far below", "fig. 7"),
        ("Reward model, agent encoder, largest set", _sweep_accuracy(sweep, "agent", "largest"), "~100 %", "fig. 7"),
        ("Reward model, random encoder, largest set", _sweep_accuracy(sweep, "random", "largest"), "far below", "fig. 7"),
        ("Main reward model, held-out accuracy", (res.get("reward") or {}).get("reward/accuracy"), "—", "§3.5"),
        *([("Second reward model (fine-tuned agent's rollouts), held-out accuracy",
            res["reward_pft"].get("reward/accuracy"), "—", "app. A")] if res.get("reward_pft") else []),  # fmt: skip
        (f"Preference FT: {target} pad", _frac(res, "eval_pft", target), "higher than SFT", "fig. 8/9"),
        (f"Aligned ({_alignment_steps(align)}, {online_episodes(align):,} online episodes): {target} pad",
         _frac(res, "eval_align", target), f"≈{paper_align:.0f} % after 9,600 episodes", "app. I"),  # fmt: skip
        ("Aligned: timed out pinned at a wall (the other behaviour must not collapse)", _pinned(res, "eval_align"),
         "—" if sft_pinned is None else f"— (SFT agent: {100 * sft_pinned:.1f} %)", "#6"),  # fmt: skip
        (f"DPO (offline): {target} pad", _frac(res, "eval_dpo", target), "not run in the paper", "app. J"),
    ]
    if _evaluated(res, "eval_deploy"):  # the aligned agent again, sampled as a game would run it
        rows.insert(-1, (f"Aligned, sampled at T = {_temperature(deploy_t)} (deployment): {target} pad",
                         _frac(res, "eval_deploy", target), "— (the paper samples at T = 1)", "§3.4"))  # fmt: skip
    return rows


# ---- the alignment run (figures 8/9 for the main run) ----------------------------------------


def _plot_alignment_run(metrics: list[dict], res: dict, target: str, path: Path) -> Path:
    """The main alignment's curve, with the evaluations of the agent it started from (at 0 episodes)
    and of the aligned agent (at the online episodes it played) drawn on it."""
    align = res.get("align") or {}
    after = " after the ReST steps" if align.get("rest") or align.get("sharpen") else ""
    ends = [(0, "eval_pft", "preference-fine-tuned agent (evaluation)"),
            (online_episodes(align), "eval_align", f"aligned agent{after} (evaluation)")]  # fmt: skip
    points = []
    for x, stage, label in ends:
        ev = _evaluated(res, stage)
        if ev:
            points.append((x, ev["jump_pads"][target]["fraction"], ev["jump_pads"][target]["stderr"], label))
    return plot_alignment(metrics, target, path, points=tuple(points))


def _reward_hacking_check(metrics: list[dict], target: str, reinforced: bool) -> str:
    """The reward model's mean return against the true target success, first rows against last: a
    rising return with flat success would be reward hacking."""
    n = max(1, min(10, len(metrics) // 3))  # batches (or ReST rounds) at each end, apart
    noun = "batch" if reinforced else "round"
    unit = noun if n == 1 else f"{n} {noun}{'es' if reinforced else 's'}"  # first vs last round, or 10 batches
    r0 = np.nanmean([m.get("align/reward_return", np.nan) for m in metrics[:n]])
    r1 = np.nanmean([m.get("align/reward_return", np.nan) for m in metrics[-n:]])
    s0 = np.mean([m["align/success"] for m in metrics[:n]])
    s1 = np.mean([m["align/success"] for m in metrics[-n:]])
    verdict = ("the true success rose with it: no sign of reward hacking" if s1 > s0 + 0.05 or s1 > 0.9
               else "the true success did not follow: <b>possible reward hacking</b>")  # fmt: skip
    return (f"<p>Reward-model return went from {r0:.3f} to {r1:.3f} over alignment (first vs last {unit}), "
            f"and the true {target} success from {100 * s0:.0f}% to {100 * s1:.0f}%: {verdict}.</p>")  # fmt: skip


def _alignment_notes(metrics: list[dict], res: dict, target: str, deploy_t: float | None) -> str:
    """The paragraphs under figures 8/9: the reward-hacking check, and what each step played."""
    align = res.get("align") or {}
    reinforced, rest, sharpened = bool(align.get("reinforce")), align.get("rest"), align.get("sharpen")
    notes = ""
    if metrics:
        if res.get("reward_pft"):
            notes += ("<p>The alignment followed the second reward model, trained on comparisons of the "
                      "preference-fine-tuned agent's own rollouts.</p>")  # fmt: skip
        notes += _reward_hacking_check(metrics, target, reinforced)
    if rest:
        k = rest.get("rounds", 1)
        notes += (f"<p>{'Then' if reinforced else 'No REINFORCE:'} {k} ReST round{'s' if k > 1 else ''} (online ReST, or "
                  f"expert iteration) aligned the agent, {rest['ranked']} episodes sampled at "
                  f"T = {_temperature(rest.get('temperature'))} in all, each round's best {rest['kept'] // k} by the "
                  f"reward model cloned into the agent the next round plays. The curve's points "
                  f"{'after the batches ' if reinforced else ''}are each round's own episodes.</p>")  # fmt: skip
    if sharpened:
        rounds = sharpened.get("rounds", 1)
        earlier = " and ".join([*(["REINFORCE's"] if reinforced else []), *(["the rounds'"] if rest else [])])
        which = f"online episodes beyond {earlier} own" if earlier else "the alignment's only online episodes"
        notes += (f"<p>Then {'a second' if rest else 'a'} ReST step (sharpen): {sharpened['ranked']} new episodes "
                  f"sampled at T = {_temperature(sharpened.get('temperature'))}, the best {sharpened['kept']} by the "
                  f"reward model cloned into the policy"
                  f"{f' over {rounds} rounds, each played by the agent the last one cloned' if rounds > 1 else ''}; "
                  f"these are {which}, counted in the aligned row above.</p>")  # fmt: skip
    if _evaluated(res, "eval_deploy"):
        notes += (f"<p>The row sampled at T = {_temperature(deploy_t)} evaluates the same aligned agent with its "
                  f"action distribution sharpened, as an LLM is decoded below its training temperature; the "
                  f"paper's figures, and the row above it, sample at T = 1.</p>")  # fmt: skip
    return notes


# ---- reproduce: the variants (figures 8/9, appendix I) and model sizes (figure 12) ------------


def _variants_section(out: Path, res: dict, variants: list[dict], figs: Path) -> tuple[dict, dict, list[tuple], str]:
    """Each alignment variant's curve (mean over seeds) and final distribution: the curves, the
    distributions, rows for the claims table, and the HTML."""
    curves: dict[str, dict] = {}
    final: dict[str, dict] = {}
    rows, table = [], ""
    for v in variants:
        target, label, runs = v["target"], v["label"], v["runs"]
        if not runs:
            continue
        metrics = [read_metrics(out / a / "model") for a, _ in runs]
        evals = [res.get(e) or {} for _, e in runs]
        d = mean_distribution(evals) if all("jump_pads" in e for e in evals) else None
        if all(metrics):
            c = curves.setdefault(target, {})[label] = alignment_curve(metrics)
            if d:
                t = d["jump_pads"][target]
                episodes = float(np.mean([online_episodes(res.get(a) or {}) for a, _ in runs]))
                c["final"] = {"episodes": episodes, "mean": t["fraction"], "stderr": t["stderr"]}
        if not d:
            continue
        final.setdefault(target, {})[label] = d
        paper = _paper_alignment(target, v["comparisons"], v["pft"])
        rows.append((f"Aligned to {target}, {label}: {target} pad (mean of {len(evals)} seeds)",
                     d["jump_pads"][target]["fraction"], paper, "figs. 8/9, app. I"))  # fmt: skip
        table += (f"<tr><td>{target}</td><td>{html.escape(label)}</td><td>{len(evals)}</td>"
                  + "".join(f"<td>{_mean_se(d['jump_pads'][p])}</td>" for p in PADS) + f"<td>{html.escape(paper)}</td></tr>")  # fmt: skip
    page = ""
    if curves:
        plot_alignment_curves(curves, figs / "reproduce_curves.png")
        page += f"<h2>Alignment variants (figures 8/9)</h2>{_img(figs / 'reproduce_curves.png')}"
        page += ("<p>Each line: target-pad success per batch, a moving mean per seed, then the mean over seeds; "
                 "shaded ±1 standard error over seeds. A diamond: the final agents' evaluation (mean ± 1 standard "
                 "error over seeds), drawn at the online episodes they played, the ReST steps' included.</p>")  # fmt: skip
    if final:
        for target, dists in final.items():
            marks = {label: {target: PAPER[f"align_{target}"]} for label in dists if label == "large set, PFT + RL"
                     and f"align_{target}" in PAPER}  # fmt: skip
            plot_distributions(dists, marks, figs / f"reproduce_final_{target}.png", f"Final distributions, aligned to {target} (app. I)")
        page += ("<h2>Final distributions per variant (appendix I)</h2><table><tr><th>target</th><th>variant</th>"
                 "<th>seeds</th>" + "".join(f"<th>{p}</th>" for p in PADS) + f"<th>paper (target pad)</th></tr>{table}</table>"
                 + "".join(_img(figs / f"reproduce_final_{t}.png") for t in final))  # fmt: skip
    return curves, final, rows, page


def _sizes_section(res: dict, sizes: list[dict], figs: Path) -> tuple[list[dict], list[tuple], str]:
    """Figure 12: how often each model size fails, from scratch and pre-trained + SFT, with its
    parameter count from results.json: the sizes' rows, rows for the claims table, and the HTML."""
    size_rows, rows, table, by_size = [], [], "", {}
    for size in sizes:
        ev = {role: res.get(size["stages"][f"eval_{role}"]) or {} for role in ("scratch", "sft")}
        if not all("jump_pads" in e for e in ev.values()):
            continue
        params = int(size["parameters"])
        none = {role: e["jump_pads"]["none"] for role, e in ev.items()}
        size_rows.append({"preset": size["preset"], "parameters": params, "none_scratch": none["scratch"], "none_sft": none["sft"]})
        by_size[f"{size['preset']} ({params / 1e6:.2f}M)"] = ev["scratch"]
        rows.append((f"Fails (no pad), {size['preset']} model ({params / 1e6:.2f}M) from scratch", none["scratch"]["fraction"],
                     "falls as parameters grow", "fig. 12"))  # fmt: skip
        table += (f"<tr><td>{size['preset']}</td><td>{params:,}</td><td>{_mean_se(none['scratch'])}</td>"
                  f"<td>{_mean_se(none['sft'])}</td></tr>")  # fmt: skip
    if not size_rows:
        return size_rows, rows, ""
    plot_distributions(by_size, {}, figs / "reproduce_sizes.png", "Jump pads by model size, from scratch (fig. 12)")
    ordered = sorted(size_rows, key=lambda r: r["parameters"])
    falls = all(a["none_scratch"]["fraction"] >= b["none_scratch"]["fraction"] for a, b in zip(ordered, ordered[1:]))
    page = ("<h2>Model sizes (figure 12)</h2><table><tr><th>preset</th><th>parameters</th>"
            "<th>fails, from scratch (fig. 12)</th><th>fails, pre-trained + SFT</th></tr>" + table + "</table>"
            f"<p>The paper: the failure rate falls as parameters grow. Here, from scratch: it "
            f"{'does' if falls else '<b>does not</b>'}.</p>{_img(figs / 'reproduce_sizes.png')}")  # fmt: skip
    return size_rows, rows, page


def _reproduce_section(out: Path, res: dict, plan: dict, figs: Path) -> tuple[dict, list[tuple], str]:
    """results.json's `reproduce` plan made into figures: the "reproduce_figures" that results.json
    gains (curves, final distributions, sizes), rows for the claims table, and the HTML."""
    curves, final, rows, page = _variants_section(out, res, plan.get("variants") or [], figs)
    sizes, size_rows, size_page = _sizes_section(res, plan.get("sizes") or [], figs)
    return {"curves": curves, "final": final, "sizes": sizes}, rows + size_rows, page + size_page


# ---- the page ----------------------------------------------------------------------------------


def _read_results(out: Path) -> dict:
    path = out / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the pipeline writes it before its report stage")
    results = json.loads(path.read_text())
    missing = [k for k in ("target", "stages") if k not in results]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(repr(k) for k in missing)}; not a pipeline's results")
    return results


def _page(out: Path, results: dict, rows: list[tuple], notes: str, reproduce_html: str) -> str:
    res, target, figs = results["stages"], results["target"], out / "report_figures"
    secs = results.get("seconds") or {}
    total = results.get("total_seconds")
    total = float(sum(v for v in secs.values() if v)) if total is None else total
    table = "".join(f"<tr><td>{html.escape(q)}</td><td>{_pct(o)}</td><td>{html.escape(p)}</td><td>{w}</td></tr>"
                    for q, o, p, w in rows)  # fmt: skip
    times = "".join(f"<tr><td>{k}</td><td>{v:.1f} s</td></tr>" for k, v in secs.items() if v is not None)
    heat = "".join(f"<figure>{_img(out / f'eval_{k}' / 'heatmap.png')}<figcaption>{k}</figcaption></figure>"
                   for k in ("base", "sft", "pft", "align", "deploy", "dpo", "scratch")
                   if k != "deploy" or _evaluated(res, "eval_deploy"))  # fmt: skip
    videos = ""
    for k in ("sft", "align"):
        for v in sorted((out / f"eval_{k}" / "videos").glob("*.mp4"))[:2]:
            videos += f"<figure>{_video(v)}<figcaption>{k}: {v.stem}</figcaption></figure>"
    config_file = out / "pipeline.json"
    config = (f"<pre>{html.escape(json.dumps(json.loads(config_file.read_text()), indent=1))}</pre>"
              if config_file.is_file() else f"<p class=missing>missing: {html.escape(str(config_file))}</p>")  # fmt: skip
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>agentalign report: {html.escape(str(out))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}figure{{display:inline-block;margin:4px;
vertical-align:top}}figure img{{max-width:320px}}video{{width:360px}}pre{{font-size:11px;background:#f6f6f6;padding:8px;
overflow:auto;max-height:400px}}.missing{{color:#a00}}</style></head><body>
<h1>Aligning agents like LLMs — reproduction on SkyGarden</h1>
<p>Run folder <code>{html.escape(str(out))}</code>; target pad <b>{target}</b>; total stage time
{total / 60:.1f} min. Every number below was computed by this run.</p>
<h2>The paper's findings, ours beside them</h2>
<table><tr><th>quantity</th><th>this run</th><th>paper</th><th>where</th></tr>{table}</table>
<h2>Pre-training, fine-tuning, scratch (figures 3-5)</h2>{_img(figs / 'bc.png')}
<h2>Reward models against comparisons (figure 7)</h2>{_img(out / 'sweep' / 'sweep.png')}
<h2>Online alignment (figures 8/9)</h2>{_img(figs / 'align.png')}{notes}
<h2>Final distributions (appendix I)</h2>{_img(figs / 'final.png')}
{reproduce_html}
<h2>Trajectories per stage (figure 10)</h2>{heat}
<h2>Videos</h2>{videos or '<p>no videos</p>'}
<h2>Wall time per stage</h2><table>{times}</table>
<h2>Configuration and machine</h2>{config}
</body></html>"""


def write_report(run_dir: Path) -> Path:
    """Write RUN/report.html and RUN/report_figures/ from RUN/results.json and the stages' files,
    then rewrite results.json with "claims" (and, with `reproduce`, "reproduce_figures") added.
    Returns report.html's path."""
    out = Path(run_dir)
    results = _read_results(out)
    res, target, deploy_t = results["stages"], results["target"], results.get("deploy_temperature")
    figs = out / "report_figures"
    figs.mkdir(exist_ok=True)
    bc = {k: _evaluated(res, f"eval_{k}") for k in ("base", "sft", "scratch")}
    final = {k: _evaluated(res, f"eval_{k}") for k in ("sft", "pft", "align", "deploy", "dpo")}
    plot_distributions(bc, PAPER, figs / "bc.png", "Jump pads reached: base, SFT, scratch (figs. 3-5)")
    plot_distributions(final, {}, figs / "final.png", f"Final distributions, aligned to {target} (app. I)")
    metrics = read_metrics(out / "align" / "model")
    if metrics:
        _plot_alignment_run(metrics, res, target, figs / "align.png")
    rows = _claims(res, target, _sweep_rows(out), deploy_t)
    derived: dict = {}
    reproduce_html = ""
    if results.get("reproduce"):
        derived["reproduce_figures"], more, reproduce_html = _reproduce_section(out, res, results["reproduce"], figs)
        rows += more
    derived["claims"] = [{"quantity": q, "ours": o, "paper": p, "where": w} for q, o, p, w in rows]
    path = out / "report.html"
    atomic_write_text(path, _page(out, results, rows, _alignment_notes(metrics, res, target, deploy_t), reproduce_html))
    kept = {k: v for k, v in results.items() if k not in DERIVED}  # replaced, so a second report writes the same file
    atomic_write_json(out / "results.json", json.loads(json.dumps({**kept, **derived}, default=float)))
    return path
