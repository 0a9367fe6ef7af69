"""Accuracy on the procedural test split (and, through a plugin, on real benchmarks with lmms-eval)."""
