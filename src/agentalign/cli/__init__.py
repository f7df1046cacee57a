"""The `agentalign` command line. Thin: each command parses, checks, and calls the same library
function as the pipeline; bad input is one line and exit code 2 (cli/common.py)."""

from __future__ import annotations

import os

# torch's OpenMP threads spin at barriers; beside numba's pool (a second OpenMP runtime) or another
# busy process on a 2-core machine that made rollouts 10x slower. Passive waiting costs nothing
# measurable alone (benchmarks/rollout_throughput.py). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from agentalign.cli import align, eval, label, reward, train  # noqa: E402
from agentalign.cli.common import main  # noqa: E402,F401  (the entry point)
from agentalign.cli.data import data_app  # noqa: E402
from agentalign.cli.env import env_app  # noqa: E402
from agentalign.cli.pipeline import config_app, pipeline  # noqa: E402

app = typer.Typer(help="Train game agents the way LLMs are trained.", no_args_is_help=True,
                  pretty_exceptions_enable=False)  # fmt: skip
app.add_typer(env_app, name="env")
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.command("pipeline")(pipeline)
train.register(app)  # pretrain, sft, scratch
eval.register(app)  # eval, rollout
reward.register(app)  # prefs, reward
align.register(app)  # pft, align, dpo
label.register(app)  # label serve, add-labeller, stats, export

if __name__ == "__main__":  # pragma: no cover
    main()
