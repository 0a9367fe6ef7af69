import json

import pytest

from fast_dvlm.errors import FastDVLMError
from fast_dvlm.workdir import claim_workdir


def test_claim_records_then_accepts_the_same_settings(tmp_path):
    workdir = tmp_path / "run"
    claim_workdir(workdir, {"steps": 10, "sizes": (4, 8)}, "settings.json")
    assert json.loads((workdir / "settings.json").read_text()) == {"steps": 10, "sizes": [4, 8]}
    claim_workdir(workdir, {"steps": 10, "sizes": (4, 8)}, "settings.json")  # tuples equal their JSON lists


def test_claim_names_changed_added_and_removed_settings(tmp_path):
    claim_workdir(tmp_path, {"steps": 10, "lr": 1e-3}, "settings.json")
    with pytest.raises(FastDVLMError, match=r"other recipe settings \(lr, seed, steps differ\)"):
        claim_workdir(tmp_path, {"steps": 20, "seed": 1}, "settings.json", "recipe settings")
    assert json.loads((tmp_path / "settings.json").read_text()) == {"steps": 10, "lr": 1e-3}  # kept
