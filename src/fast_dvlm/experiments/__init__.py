"""The paper's comparisons at small scale: `fast-dvlm experiments` (runner.py) converts every
variant (variants.py) on one budget (budget.py), scores each, and writes docs/RESULTS.md (results.py).

Nothing is imported here, so the command line can read the budget without loading torch."""
