"""The lmms-eval plugin for real: lmms-eval's own evaluator runs our model (found through the entry
point) on the local task made from the procedural test split, and must report the accuracy our own
scoring gives on the same items; `loglikelihood` must equal log-probs from a full forward pass."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before datasets is imported: nothing may be downloaded
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed: pip install -e '.[eval]'")

from lmms_eval import evaluator  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

import fast_dvlm  # noqa: E402
from fast_dvlm import DiffusionVLM  # noqa: E402
from fast_dvlm.data.build import build_splits  # noqa: E402
from fast_dvlm.eval.accuracy import read_items, score_answers  # noqa: E402
from fast_dvlm.integrations.lmms_eval import FastDVLM  # noqa: E402
from fast_dvlm.integrations.lmms_eval_tasks import TASKS_DIR  # noqa: E402
from fast_dvlm.integrations.lmms_eval_tasks.utils import mean_over_tasks, process_results  # noqa: E402
from fast_dvlm.models.tiny import build_tiny_model  # noqa: E402
from fast_dvlm.prompt import encode_prompt, load_image  # noqa: E402

from .conftest import TEST_SIZE  # noqa: E402

TASK = "fast_dvlm_procedural"
DEMO = Path(fast_dvlm.__file__).parent / "assets" / "demo" / "config.json"
# the demo is trained, so some of its answers are right and agreeing on accuracy means something
WITH_DEMO = pytest.mark.skipif(not DEMO.is_file(), reason="the demo model is not in this checkout")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Two test items per task, at the demo's image size, with lmms-eval's dataset cache beside them."""
    root = tmp_path_factory.mktemp("procedural")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LMMS_EVAL_DATASETS_CACHE", str(root / "datasets-cache"))
        yield build_splits(root, {"test": 2}, 112, progress=False, splits=("test",))["test"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2_5_vl")
    DiffusionVLM(*build_tiny_model("qwen2_5_vl", TEST_SIZE)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def task_manager():
    return TaskManager(include_path=str(TASKS_DIR))


def test_the_entry_point_registers_the_model():
    from lmms_eval.models import get_model

    assert get_model("fast_dvlm") is FastDVLM


@pytest.mark.parametrize(
    "model, mode", [("tiny", "ar"), pytest.param("demo", "spec-linear", marks=WITH_DEMO)]
)
def test_the_mode_defaults_to_the_checkpoint_s(model, mode, tiny_path):
    assert FastDVLM(pretrained=str(tiny_path) if model == "tiny" else model).mode == mode


def test_the_task_scores_with_our_scorers(split):
    for record in json.loads(split.read_text()):
        reference = record["conversations"][1]["value"]
        assert process_results(record, [reference]) == {"accuracy": (record["task"], True)}
        assert process_results(record, ["I cannot tell."]) == {"accuracy": (record["task"], False)}


def test_accuracy_is_a_mean_over_tasks():
    # items: 1 of 2 right on task a, 1 of 1 on task b -> (50 + 100) / 2, not 2 of 3 items
    assert mean_over_tasks([("a", True), ("a", False), ("b", True)]) == pytest.approx(75.0)


@pytest.mark.parametrize(
    "model, mode, settings",
    [
        pytest.param("demo", "spec-linear", {}, marks=WITH_DEMO),
        ("tiny", "diffusion", {"block_size": 8, "threshold": 0.7, "max_new_tokens": 12}),  # random, from disk
        ("tiny", "spec-linear", {"block_size": 4, "max_new_tokens": 12, "batch_size": 5}),  # in batches
    ],
)
def test_lmms_eval_score_equals_our_scoring(
    model, mode, settings, split, tiny_path, task_manager, monkeypatch
):
    pretrained = str(tiny_path) if model == "tiny" else model
    model_args = ",".join(f"{k}={v}" for k, v in {"pretrained": pretrained, "mode": mode, **settings}.items())
    monkeypatch.chdir(split.parent)  # the task reads test.json and its images from the working directory
    result = evaluator.simple_evaluate(
        model="fast_dvlm", model_args=model_args, tasks=[TASK], task_manager=task_manager, log_samples=True
    )

    vlm = fast_dvlm.load(pretrained)
    settings = dict(settings)
    max_new_tokens = settings.pop("max_new_tokens", 128)  # the plugin's default, as `fast-dvlm bench`'s
    settings.pop("batch_size", None)  # batched answers are the answers alone (tests/test_batch.py)
    items = read_items(split)
    outs = [vlm.generate(item.question, [item.image], mode, max_new_tokens, **settings) for item in items]
    answers = iter(outs)
    scores = score_answers(items, lambda _: next(answers), progress=False)
    ours = sum(score.summary()["accuracy"] for score in scores.values()) / len(scores)
    assert result["results"][TASK]["accuracy,none"] == pytest.approx(ours)
    samples = result["samples"][TASK]
    assert len(samples) == len(items) == 22
    for sample in samples:
        assert sample["filtered_resps"][0] == outs[sample["doc_id"]].text
    if model == "demo":
        assert ours > 0


def full_forward_logprob(vlm: DiffusionVLM, prompt: str, image, continuation: str) -> tuple[float, bool]:
    """The reference: one plain forward pass of the whole model over prompt + continuation."""
    batch = encode_prompt(vlm.processor, prompt, [image])
    ids = torch.tensor(vlm.tokenizer(continuation, add_special_tokens=False)["input_ids"])[None]  # [1, n]
    inputs = dict(batch)
    inputs["input_ids"] = torch.cat([batch["input_ids"], ids], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in batch:  # Qwen-VL processors mark the image tokens; LLaVA-style ones do not
        inputs["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(ids)], dim=1)
    with torch.inference_mode():
        logits = vlm.model(**inputs).logits[0, batch["input_ids"].shape[1] - 1 : -1].float()  # [n, V]
    logprob = logits.log_softmax(-1).gather(1, ids[0, :, None]).sum()
    return float(logprob), bool(torch.equal(logits.argmax(-1), ids[0]))


def greedy_answer(vlm: DiffusionVLM, items) -> tuple[int, str]:
    """An item and the start of its greedy answer, chosen so that the text tokenizes back to the same
    tokens (the byte-level pieces a random model emits often do not)."""
    for index, item in enumerate(items):
        ids = vlm.generate(item.question, [item.image], "ar", max_new_tokens=3).token_ids
        text = vlm.tokenizer.decode(ids)
        if vlm.tokenizer(text, add_special_tokens=False)["input_ids"] == ids:
            return index, text
    raise AssertionError("no greedy answer reads back as its own tokens")


@pytest.mark.parametrize("model", ["tiny", pytest.param("demo", marks=WITH_DEMO)])
def test_loglikelihood_equals_a_full_forward_pass(model, split, tiny_path):
    lm = FastDVLM.create_from_arg_string(f"pretrained={tiny_path if model == 'tiny' else model},mode=ar")
    items = read_items(split)
    lm.task_dict = {TASK: {"test": [{"image": str(item.image)} for item in items]}}
    d, greedy = greedy_answer(lm.vlm, items)
    other = (d + 1) % len(items)
    cases = [(d, greedy), (d, greedy + " not"), (other, "A"), (other, " a red square, then two more")]
    requests = [
        Instance(
            "loglikelihood",
            (items[d].question, continuation, lambda doc: [load_image(doc["image"])], d, TASK, "test"),
            idx=0,
            metadata={"task": TASK, "doc_id": d, "repeats": 1},
        )
        for d, continuation in cases
    ]
    results = lm.loglikelihood(requests)
    for (d, continuation), (logprob, is_greedy) in zip(cases, results, strict=True):
        want_logprob, want_greedy = full_forward_logprob(
            lm.vlm, items[d].question, items[d].image, continuation
        )
        assert logprob == pytest.approx(want_logprob, rel=1e-5, abs=1e-3)
        assert is_greedy == want_greedy
    assert len({logprob for logprob, _ in results}) == len(cases)
    assert results[0][1]  # the model's own greedy answer
