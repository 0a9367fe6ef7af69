"""lmms-eval task definitions for fast-dvlm's own data: pass `TASKS_DIR` to lmms-eval's `--include_path`."""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
