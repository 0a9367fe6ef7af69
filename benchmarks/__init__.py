"""Studies and measurements of fast-dvlm, outside the installed package: each file is one study, run
from the repository root as `python benchmarks/NAME.py` (its docstring gives the command that wrote
its results under `benchmarks/results/`). The tests import the studies they check as
`benchmarks.NAME` (pytest puts the repository root on the path: `pythonpath` in pyproject.toml)."""
