"""Benchmarks: speed of passes and of decoding modes, accuracy on the procedural tasks."""
