"""The whole method, chained and resumable: from nothing to an aligned agent and a report.

    cfg = load_pipeline_config("cpu", ["target=right"])   # config.py: presets, --set overrides
    run_pipeline("runs/cpu", cfg)                          # runner.py over plan.py's stages

`plan.py` holds the stage graph, `stages.py` one call per stage into the library (the same run
function the stage's CLI command calls), `runner.py` the markers, hashes, resume and results.json.
"""

from agentalign.pipeline.config import PipelineConfig, ReproduceConfig, load_pipeline_config, preset_table
from agentalign.pipeline.plan import reproduce_plan
from agentalign.pipeline.runner import Run, run_pipeline

__all__ = ["PipelineConfig", "ReproduceConfig", "Run", "load_pipeline_config", "preset_table", "reproduce_plan", "run_pipeline"]
