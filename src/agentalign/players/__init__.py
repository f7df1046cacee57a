"""Scripted players: the privileged navigator (and, built on it, the synthetic population)."""
