"""Tests of agentalign.data: the store, the window sampler, imports and exports."""
