"""Conversion training: conversation data, the accelerate trainer, checkpoints."""
