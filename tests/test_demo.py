"""`fast-dvlm demo`: the image's path, the reference answer, whole answers, and median timings."""

from __future__ import annotations

from rich.control import strip_control_codes

from fast_dvlm.demo.show import median_run, run_demo
from fast_dvlm.vlm import GenerationOutput


def test_timings_are_medians_of_repeats_after_a_warm_up():
    seconds = iter([9.0, 0.4, 0.2, 5.0, 0.3])  # the warm-up (9 s) is left out of the median

    def run() -> GenerationOutput:
        return GenerationOutput("hi", [1, 2], 2, 1, next(seconds), 5, "ar")

    out = median_run(run, repeats=4)
    assert out.seconds == 0.35 and out.text == "hi"
    assert next(seconds, None) is None  # 1 + 4 runs, no more


def test_the_demo_shows_the_image_the_reference_and_whole_answers(tmp_path, capsys):
    [scene] = run_demo("tiny:qwen2_5_vl", "tiny:qwen2_5_vl", scenes=1, seed=0, repeats=1, out_dir=tmp_path)
    out = capsys.readouterr().out
    assert scene.image.parent == tmp_path and scene.image.is_file()
    assert f"image: {scene.image}\n" in out
    assert f"reference: {scene.qa.answer}  (scored on: {scene.qa.key})\n" in out
    assert len(scene.runs) == 5
    longest = max((run.text for run in scene.runs.values()), key=len)
    assert len(longest) > 160  # random tiny models talk on for all 128 tokens
    for run in scene.runs.values():  # whole, on one line, never cut to the terminal's width
        assert f": {strip_control_codes(run.text)}\n" in out  # (a random model writes form feeds too)
