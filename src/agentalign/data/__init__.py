"""The data layer: episodes, the on-disk episode store, training windows, import and export.

Torch-free except `WindowDataset`, `WindowLoader` and `LoaderConfig`, which load torch only when
first asked for (they live in agentalign.data.torch_data).
"""

from agentalign.data.episode import JUMP_PADS, STANDARD_METADATA, Episode
from agentalign.data.sampler import WindowConfig, WindowSampler
from agentalign.data.store import (
    SCHEMA_VERSION,
    BlockCache,
    ChecksumError,
    StoreError,
    StoreReader,
    StoreWriter,
    VerifyReport,
    WriterConfig,
    open_store,
    verify,
)

_TORCH_NAMES = ("WindowDataset", "WindowLoader", "LoaderConfig", "batch_to_torch")

__all__ = [
    "SCHEMA_VERSION",
    "JUMP_PADS",
    "STANDARD_METADATA",
    "Episode",
    "StoreWriter",
    "StoreReader",
    "WriterConfig",
    "StoreError",
    "ChecksumError",
    "VerifyReport",
    "BlockCache",
    "open_store",
    "verify",
    "WindowConfig",
    "WindowSampler",
]  # the torch names stay out so that `import *` does not load torch


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from agentalign.data import torch_data

        return getattr(torch_data, name)
    raise AttributeError(f"module 'agentalign.data' has no attribute {name!r}")
