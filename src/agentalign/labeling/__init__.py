"""People in the loop: the preference-labelling web app (docs/labeling.md).

`db` (the SQLite label database), `clips` (trajectories rendered as WebM clips), `selection`
(which questions to ask: random or active), `server` (the FastAPI app: `make_app`, `serve`) and
`export` (labels -> the project's preference file, `export_labels`; `stats`). Importing this
package loads none of them (FastAPI loads with `server` only).
"""

from __future__ import annotations

_NAMES = {"make_app": "server", "serve": "server", "export_labels": "export", "stats": "export",
          "LabelDB": "db"}  # fmt: skip

__all__ = ["LabelDB", "export_labels", "make_app", "serve", "stats"]


def __getattr__(name: str):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(f"agentalign.labeling.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'agentalign.labeling' has no attribute {name!r}")
