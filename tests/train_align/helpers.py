"""What the alignment tests compare: checkpoints' weights and their recorded parents."""

import json

import torch

from agentalign.models import Policy


def params(d):
    return Policy.from_pretrained(d).state_dict()


def same(a, b) -> bool:
    """Whether two checkpoints hold bit-identical weights."""
    a, b = params(a), params(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def parent(d) -> str:
    return json.loads((d / "config.json").read_text())["parent"]
