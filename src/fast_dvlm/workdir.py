"""A work directory belongs to the settings it was started with.

Long jobs (`make-demo`, `experiments`) resume from what their work directory holds; resuming with
other settings would mix stages or variants made differently, so the first run records its
settings and every later run must match them.
"""

import json
from pathlib import Path

from .errors import FastDVLMError


def claim_workdir(workdir: Path, settings: dict, filename: str, what: str = "settings") -> None:
    """Record `settings` in `workdir/filename`, or raise if the directory was started with others.

    `what` names the settings in the error ("recipe settings"); the error lists the keys that
    differ, so the user sees which flag to change back."""
    settings = json.loads(json.dumps(settings))  # as JSON gives them back (tuples as lists)
    saved = workdir / filename
    before = json.loads(saved.read_text()) if saved.exists() else settings
    if before != settings:
        changed = sorted(k for k in before | settings if before.get(k) != settings.get(k))
        raise FastDVLMError(
            f"{workdir} was started with other {what} ({', '.join(changed)} differ): "
            "rerun with the same ones, or give another --workdir"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(settings, indent=1))
