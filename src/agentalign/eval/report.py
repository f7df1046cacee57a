"""The reproduction report: the paper's figures regenerated from one pipeline run, each beside
the paper's number for the same quantity, in one self-contained HTML file (images and videos
inlined) plus results.json with every headline figure.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agentalign.train.common import atomic_write_json, read_metrics

if TYPE_CHECKING:
    from agentalign.pipeline import Run

# The paper's numbers for the same quantities (percent).
PAPER = {
    "base": {"none": 43.0, "left": 12.0, "middle": 37.0, "right": 7.5},  # figure 3
    "sft": {"none": 11.0, "left": 32.0, "middle": 33.0, "right": 23.0},  # figure 5 (pre-trained + fine-tuned)
    "scratch": {"none": 20.0},  # figure 5, trained on the curated set only
    "reward_agent_100": 90.0,  # figure 7: agent encoder above 90 % at ~100 comparisons ...
    "reward_agent_largest": 100.0,  # ... and near 100 % at the most
    "align_left": 99.0,  # figures 8, appendix I: after 9,600 online episodes with preference FT
    "align_right": 100.0,  # figure 9, appendix I
}
PADS = ("none", "left", "middle", "right")


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
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_alignment(metrics: list[dict], target: str, path: Path, window: int = 10) -> Path:
    """Figures 8/9: target-pad success during online alignment against episodes, and the reward
    model's return beside it (a rising return with flat success would be reward hacking)."""
    plt = _plt()
    eps = np.array([m["align/episodes"] for m in metrics])
    succ = np.array([m["align/success"] for m in metrics])
    ret = np.array([m.get("align/reward_return", np.nan) for m in metrics])
    k = max(1, min(window, len(succ)))
    smooth = np.convolve(succ, np.ones(k) / k, mode="valid")
    # Standard error of the moving mean over the window's batches.
    se = np.array([succ[i : i + k].std() / np.sqrt(k) for i in range(len(smooth))])
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=120)
    xe = eps[k - 1 :]
    ax.plot(xe, 100 * smooth, color="tab:blue", label=f"{target} success (moving mean of {k} batches)")
    ax.fill_between(xe, 100 * (smooth - se), 100 * (smooth + se), color="tab:blue", alpha=0.2)
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


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}%"


def write_report(run: "Run") -> Path:
    out = run.out
    figs = out / "report_figures"
    figs.mkdir(exist_ok=True)
    res = {s.name: (run.marker(s.name) or {}).get("result", {}) for s in run.stages if s.name != "report"}
    secs = {s.name: (run.marker(s.name) or {}).get("seconds") for s in run.stages if s.name != "report"}
    target = run.cfg.target
    def evaluated(k: str) -> dict | None:
        r = res.get(f"eval_{k}")
        return r if r and "jump_pads" in r else None

    bc = {k: evaluated(k) for k in ("base", "sft", "scratch")}
    final = {k: evaluated(k) for k in ("sft", "pft", "align", "dpo")}
    plot_distributions(bc, PAPER, figs / "bc.png", "Jump pads reached: base, SFT, scratch (figs. 3-5)")
    plot_distributions(final, {}, figs / "final.png", f"Final distributions, aligned to {target} (app. I)")
    align_metrics = read_metrics(run.dir("align") / "model")
    if align_metrics:
        plot_alignment(align_metrics, target, figs / "align.png")

    def frac(stage: str, pad: str) -> float | None:
        r = res.get(stage)
        return r["jump_pads"][pad]["fraction"] if r and "jump_pads" in r else None

    sweep_rows = json.loads((run.dir("sweep") / "sweep.json").read_text())["rows"] if (run.dir("sweep") / "sweep.json").is_file() else []

    def sweep_acc(enc: str, which: str) -> float | None:
        sel = [r for r in sweep_rows if r["encoder"] == enc and r["reward/accuracy"] is not None]
        if not sel:
            return None
        xs = sorted({r["comparisons"] for r in sel})
        x = xs[-1] if which == "largest" else min(xs, key=lambda c: abs(np.log(c / 100)))
        return float(np.mean([r["reward/accuracy"] for r in sel if r["comparisons"] == x]))

    # The claims of the paper, ours beside them.
    rows = [
        ("Base agent fails (no pad)", frac("eval_base", "none"), "43 %", "fig. 3"),
        ("Base agent, middle pad (the most)", frac("eval_base", "middle"), "37 %", "fig. 3"),
        ("Pre-trained + SFT fails", frac("eval_sft", "none"), "11 %", "fig. 5"),
        ("Scratch (curated only) fails", frac("eval_scratch", "none"), "~20 %", "fig. 5"),
        ("Reward model, agent encoder, ~100 comparisons", sweep_acc("agent", "100"), "> 90 %", "fig. 7"),
        ("Reward model, random encoder, ~100 comparisons", sweep_acc("random", "100"), "far below", "fig. 7"),
        ("Reward model, agent encoder, largest set", sweep_acc("agent", "largest"), "~100 %", "fig. 7"),
        ("Reward model, random encoder, largest set", sweep_acc("random", "largest"), "far below", "fig. 7"),
        ("Main reward model, held-out accuracy", res.get("reward", {}).get("reward/accuracy"), "—", "§3.5"),
        (f"Preference FT: {target} pad", frac("eval_pft", target), "higher than SFT", "fig. 8/9"),
        (f"Aligned (PFT + REINFORCE): {target} pad", frac("eval_align", target),
         f"≈{PAPER['align_' + target] if 'align_' + target in PAPER else 99:.0f} % after 9,600 episodes", "app. I"),
        (f"DPO (offline): {target} pad", frac("eval_dpo", target), "not run in the paper", "app. J"),
    ]
    results_json = {
        "target": target,
        "claims": [{"quantity": q, "ours": o, "paper": p, "where": w} for q, o, p, w in rows],
        "stages": res,
        "seconds": secs,
        "total_seconds": float(sum(v for v in secs.values() if v)),
    }
    atomic_write_json(out / "results.json", json.loads(json.dumps(results_json, default=float)))

    hack = ""
    if align_metrics:
        r0 = np.nanmean([m.get("align/reward_return", np.nan) for m in align_metrics[:10]])
        r1 = np.nanmean([m.get("align/reward_return", np.nan) for m in align_metrics[-10:]])
        s0 = np.mean([m["align/success"] for m in align_metrics[:10]])
        s1 = np.mean([m["align/success"] for m in align_metrics[-10:]])
        verdict = ("the true success rose with it: no sign of reward hacking" if s1 > s0 + 0.05 or s1 > 0.9
                   else "the true success did not follow: <b>possible reward hacking</b>")  # fmt: skip
        hack = (f"<p>Reward-model return went from {r0:.3f} to {r1:.3f} over alignment (first vs last 10 batches), "
                f"and the true {target} success from {100 * s0:.0f}% to {100 * s1:.0f}%: {verdict}.</p>")  # fmt: skip

    table = "".join(f"<tr><td>{html.escape(q)}</td><td>{_pct(o)}</td><td>{html.escape(p)}</td><td>{w}</td></tr>"
                    for q, o, p, w in rows)  # fmt: skip
    times = "".join(f"<tr><td>{k}</td><td>{v:.1f} s</td></tr>" for k, v in secs.items() if v is not None)
    heat = "".join(f"<figure>{_img(run.dir(f'eval_{k}') / 'heatmap.png')}<figcaption>{k}</figcaption></figure>"
                   for k in ("base", "sft", "pft", "align", "dpo", "scratch"))  # fmt: skip
    videos = ""
    for k in ("sft", "align"):
        for v in sorted((run.dir(f"eval_{k}") / "videos").glob("*.mp4"))[:2]:
            videos += f"<figure>{_video(v)}<figcaption>{k}: {v.stem}</figcaption></figure>"
    config = html.escape(json.dumps(json.loads((out / "pipeline.json").read_text()), indent=1))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>agentalign report: {html.escape(str(out))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}figure{{display:inline-block;margin:4px;
vertical-align:top}}figure img{{max-width:320px}}video{{width:360px}}pre{{font-size:11px;background:#f6f6f6;padding:8px;
overflow:auto;max-height:400px}}.missing{{color:#a00}}</style></head><body>
<h1>Aligning agents like LLMs — reproduction on SkyGarden</h1>
<p>Run folder <code>{html.escape(str(out))}</code>; target pad <b>{target}</b>; total stage time
{results_json['total_seconds'] / 60:.1f} min. Every number below was computed by this run.</p>
<h2>The paper's findings, ours beside them</h2>
<table><tr><th>quantity</th><th>this run</th><th>paper</th><th>where</th></tr>{table}</table>
<h2>Pre-training, fine-tuning, scratch (figures 3-5)</h2>{_img(figs / 'bc.png')}
<h2>Reward models against comparisons (figure 7)</h2>{_img(run.dir('sweep') / 'sweep.png')}
<h2>Online alignment (figures 8/9)</h2>{_img(figs / 'align.png')}{hack}
<h2>Final distributions (appendix I)</h2>{_img(figs / 'final.png')}
<h2>Trajectories per stage (figure 10)</h2>{heat}
<h2>Videos</h2>{videos or '<p>no videos</p>'}
<h2>Wall time per stage</h2><table>{times}</table>
<h2>Configuration and machine</h2><pre>{config}</pre>
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
