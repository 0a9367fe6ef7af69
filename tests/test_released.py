"""The authors' released formats open without remote code and decode in every mode."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, DynamicCache

import fast_dvlm
from fast_dvlm.cli import main
from fast_dvlm.errors import FastDVLMError, first_line
from fast_dvlm.models import released
from fast_dvlm.models.registry import get_family
from fast_dvlm.modes import MODES

from .released_replicas import MASK, fast_dllm_v2_replica, fast_dvlm_replica


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    ours, theirs = a.state_dict(), b.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.fixture(scope="module")
def dvlm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("released") / "Fast_dVLM_3B"
    return path, fast_dvlm_replica(path, bd_size=8)


@pytest.fixture(scope="module")
def v2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("released") / "Fast_dLLM_v2"
    return path, fast_dllm_v2_replica(path, bd_size=8)


def test_fast_dvlm_loads_with_the_checkpoint_settings(dvlm_dir):
    path, reference = dvlm_dir
    vlm = fast_dvlm.load(path)
    assert vlm.family.name == "qwen2_5_vl"
    assert same_weights(vlm.model, reference)
    assert vlm.settings.mask_token_id == vlm.tokenizer.convert_tokens_to_ids(MASK)
    assert (vlm.settings.block_size, vlm.settings.sub_block_size, vlm.settings.threshold) == (8, 8, 0.9)
    assert vlm.settings.clean_attention == "causal"
    assert vlm.default_mode == "spec-linear"  # the authors' block-diffusion model, not an AR one


@pytest.mark.parametrize("block_size", [2, 8])
def test_fast_dvlm_spec_modes_equal_transformers_generate(dvlm_dir, images, block_size):
    vlm = fast_dvlm.load(dvlm_dir[0])
    prompt = "Describe the picture in detail."
    reference = vlm.hf_generate(prompt, images[:1], max_new_tokens=20).token_ids
    for mode in ("ar", "spec-linear", "spec-quadratic"):
        out = vlm.generate(prompt, images[:1], mode, max_new_tokens=20, block_size=block_size)
        assert out.token_ids == reference, mode


@pytest.mark.parametrize("tied,legacy", [(True, False), (False, True)])
def test_fast_dvlm_key_layouts_and_tied_head(tmp_path, tied, legacy):
    reference = fast_dvlm_replica(tmp_path, tied=tied, legacy_keys=legacy)
    vlm = fast_dvlm.load(tmp_path)
    assert same_weights(vlm.model, reference)
    if tied:
        assert torch.equal(vlm.model.lm_head.weight, vlm.model.get_input_embeddings().weight)


def test_fast_dllm_v2_is_text_only_and_block_causal(v2_dir, images):
    path, reference = v2_dir
    vlm = fast_dvlm.load(path)
    assert vlm.family.name == "qwen2" and vlm.settings.clean_attention == "block-causal"
    assert vlm.settings.block_alignment == "absolute" and vlm.default_mode == "spec-linear"
    assert vlm.settings.block_size == 8
    assert vlm.settings.mask_token_id == vlm.tokenizer.convert_tokens_to_ids(MASK)
    assert same_weights(vlm.model, reference)
    prompt = "Count to ten, please."
    hf = vlm.hf_generate(prompt, max_new_tokens=12).token_ids
    runs = {mode: vlm.generate(prompt, mode=mode, max_new_tokens=12) for mode in MODES}
    ar = runs["ar"]
    assert ar.token_ids == hf and ar.nfe == len(hf)  # one causal pass per token
    # one-token blocks make block-causal attention causal and absolute alignment moot: diffusion is AR
    unit = vlm.generate(
        prompt, mode="diffusion", max_new_tokens=12, block_size=1, sub_block_size=1, threshold=1
    )
    assert (unit.token_ids, unit.nfe) == (ar.token_ids, ar.nfe)
    # passes per step. spec-quadratic: the prompt's partial last block (absolute alignment) is drafted
    # and verified linearly, the next block's first draft costs a pass, then one pass per step
    tail = 1 if ar.prompt_tokens % 8 else 0
    passes = {
        "ar": lambda n: [1] * n,
        "spec-linear": lambda n: [2] * n,  # draft + verify
        "spec-quadratic": lambda n: [2] * (1 + tail) + [1] * (n - 1 - tail),
    }
    for mode, out in runs.items():
        steps = [(s.tokens, s.passes) for s in out.trace]
        assert 0 < len(out.token_ids) <= 12 and out.prefill_nfe == 1, mode
        assert out.nfe == 1 + sum(p for _, p in steps), mode  # the prefill, then every step's passes
        assert sum(t for t, _ in steps) + 1 >= len(out.token_ids), mode
        assert all(1 <= t <= 8 and 1 <= p <= 8 for t, p in steps), mode  # at most one block (bd_size 8)
        if mode in passes:
            assert [p for _, p in steps] == passes[mode](len(steps)), mode
    with pytest.raises(FastDVLMError, match="text-only"):
        vlm.generate("What is this?", images[:1])


def test_fast_dllm_v2_block_causal_cache_equals_recompute(v2_dir):
    vlm = fast_dvlm.load(v2_dir[0])
    for mode in ("diffusion", "spec-linear"):
        cached = vlm.generate("Tell me a story.", mode=mode, max_new_tokens=16, block_size=4)
        fresh = vlm.generate("Tell me a story.", mode=mode, max_new_tokens=16, block_size=4, use_cache=False)
        assert cached.token_ids == fresh.token_ids, mode


def test_text_family_spec_modes_equal_generate_with_causal_attention(v2_dir, tmp_path):
    """With the token-causal clean stream, the text family is lossless like the VLM families."""
    vlm = fast_dvlm.load(v2_dir[0])
    vlm.settings.clean_attention, vlm.settings.block_alignment = "causal", "answer"
    reference = vlm.hf_generate("Tell me a story.", max_new_tokens=20).token_ids
    for mode in ("ar", "spec-linear", "spec-quadratic"):
        for block_size in (2, 4):
            assert vlm.generate(
                "Tell me a story.", mode=mode, max_new_tokens=20, block_size=block_size
            ).token_ids == (reference), (mode, block_size)


@pytest.mark.parametrize("kind", ["dvlm", "v2"])
def test_saved_back_opens_with_plain_transformers(kind, dvlm_dir, v2_dir, tmp_path):
    source, reference = dvlm_dir if kind == "dvlm" else v2_dir
    vlm = fast_dvlm.load(source)
    vlm.save_pretrained(tmp_path)
    auto = AutoModelForImageTextToText if kind == "dvlm" else AutoModelForCausalLM
    plain = auto.from_pretrained(tmp_path, local_files_only=True)
    assert same_weights(plain, reference)
    again = fast_dvlm.load(tmp_path)
    assert again.settings == vlm.settings


def test_cli_generate_on_a_released_replica(dvlm_dir, capsys):
    args = [
        "--model",
        str(dvlm_dir[0]),
        "--prompt",
        "Hello",
        "--mode",
        "spec-linear",
        "--max-new-tokens",
        "6",
    ]
    assert main(["generate", *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "spec-linear" and len(out["token_ids"]) <= 6


def test_missing_pieces_give_one_clear_error(tmp_path):
    fast_dvlm_replica(tmp_path / "no-vision", drop=("model.visual.blocks.0",))
    with pytest.raises(FastDVLMError, match="claims fast_dvlm but lacks"):
        fast_dvlm.load(tmp_path / "no-vision")

    fast_dvlm_replica(tmp_path / "no-vision-config")
    config = json.loads((tmp_path / "no-vision-config" / "config.json").read_text())
    del config["vision_config"]
    (tmp_path / "no-vision-config" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FastDVLMError, match="no vision_config"):
        fast_dvlm.load(tmp_path / "no-vision-config")

    fast_dllm_v2_replica(tmp_path / "no-tokenizer")
    (tmp_path / "no-tokenizer" / "tokenizer.json").unlink()
    (tmp_path / "no-tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(FastDVLMError, match="tokenizer"):
        fast_dvlm.load(tmp_path / "no-tokenizer")


def test_a_loader_error_with_no_message_is_named_by_its_type(tmp_path, monkeypatch):
    """transformers and tokenizers sometimes raise with an empty message: the error line names the
    exception's type instead of failing with an IndexError of its own."""
    fast_dllm_v2_replica(tmp_path / "v2")

    def fail(*args, **kwargs):
        raise OSError()

    monkeypatch.setattr(released.AutoTokenizer, "from_pretrained", fail)
    with pytest.raises(FastDVLMError, match=r"has no usable tokenizer files: OSError$"):
        fast_dvlm.load(tmp_path / "v2")
    monkeypatch.undo()

    monkeypatch.setattr(get_family("qwen2").model_class, "from_pretrained", fail)
    with pytest.raises(FastDVLMError, match=r"cannot load the .* weights in .*: OSError$"):
        fast_dvlm.load(tmp_path / "v2")


@pytest.mark.parametrize(
    "message, line",
    [("", "ValueError"), ("  \n\n", "ValueError"), ("\n  first\nsecond", "first"), ("one", "one")],
)
def test_first_line_of_an_exception(message, line):
    assert first_line(ValueError(message)) == line


def test_fp8_release_opens_through_the_quantisation_path(dvlm_dir, tmp_path, images):
    """The FP8 variant: compressed-tensors weights under the released config, emulated on CPU."""
    from fast_dvlm.quant import FP8Linear, quantize, save_quantized

    source = dvlm_dir[0]
    quantised = quantize(fast_dvlm.load(source), "fp8-w8a8", emulate=True)
    save_quantized(quantised, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    released = json.loads((source / "config.json").read_text())
    released["quantization_config"] = saved["quantization_config"]
    (tmp_path / "config.json").write_text(json.dumps(released))

    vlm = fast_dvlm.load(tmp_path)
    assert vlm.family.name == "qwen2_5_vl" and vlm.settings.block_size == 8
    assert any(isinstance(m, FP8Linear) for m in vlm.model.modules())
    for mode in ("ar", "spec-linear"):
        expected = quantised.generate("Describe it.", images[:1], mode, max_new_tokens=12).token_ids
        assert vlm.generate("Describe it.", images[:1], mode, max_new_tokens=12).token_ids == expected, mode


def v2_reference(
    model, prompt_ids: list[int], block: int, sub: int, tau: float, mask_id: int, stops, limit: int
):
    """Fast-dLLM v2's greedy block decoding, written from its description: blocks aligned to absolute
    positions, block-causal prefill of the prompt's full blocks, its tail decoded inside the first
    block, τ-threshold sub-blocks with shifted logits, a block-causal commit pass whose last logit
    seeds the next block. (Like fast-dvlm, it never unmasks a position into the mask token.)"""
    cache = DynamicCache(config=model.config)

    def run(ids: list[int], start: int, keep: bool) -> torch.Tensor:
        pos = torch.arange(start, start + len(ids))
        blocks = torch.arange(start + len(ids)) // block
        allowed = blocks[None, :] <= blocks[start:, None]
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
        out = model(input_ids=torch.tensor([ids]), position_ids=pos[None], attention_mask=mask,
                    past_key_values=cache, use_cache=True)  # fmt: skip
        if not keep:
            cache.crop(-len(ids))
        return out.logits[0]

    x, length = list(prompt_ids), len(prompt_ids)
    full = length // block * block
    if full:
        logits = run(x[:full], 0, keep=True)
        if full == length:
            x.append(int(logits[-1].argmax()))
    while len(x) - length < limit and not set(x[length:]) & stops:
        start = full
        known = len(x) - start
        x += [mask_id] * (block - known)
        for a in range(0, block, sub):
            while mask_id in x[start + a : start + a + sub]:
                logits = run(x[start:], start, keep=False)
                logits[:, mask_id] = float("-inf")
                probs = torch.cat([logits[:1], logits[:-1]]).softmax(-1)[a : a + sub]
                confidence, prediction = probs.max(-1)
                masked = torch.tensor([t == mask_id for t in x[start + a : start + a + sub]])
                confidence = torch.where(masked, confidence, torch.tensor(-1.0))
                chosen = masked & (confidence > tau)
                chosen[confidence.argmax()] = True
                for k in chosen.nonzero().flatten().tolist():
                    x[start + a + k] = int(prediction[k])
        x.append(int(run(x[start:], start, keep=True)[-1].argmax()))
        full += block
    answer = x[length:][:limit]
    stop_at = next((i for i, t in enumerate(answer) if t in stops), None)
    return answer if stop_at is None else answer[: stop_at + 1]


@pytest.mark.parametrize("tau", [1.0, 0.6])
def test_fast_dllm_v2_diffusion_matches_the_authors_algorithm(v2_dir, tau):
    from fast_dvlm.prompt import encode_prompt

    vlm = fast_dvlm.load(v2_dir[0])
    tails = set()
    for prompt in ("Hi.", "Tell me a long story about a fox.", "Count: one two three four five six"):
        ids = encode_prompt(vlm.processor, prompt)["input_ids"][0].tolist()
        for block, sub in ((4, 2), (8, 8), (8, 4)):
            tails.add(len(ids) % block == 0)
            ours = vlm.generate(prompt, mode="diffusion", max_new_tokens=20, block_size=block,
                                sub_block_size=sub, threshold=tau)  # fmt: skip
            reference = v2_reference(
                vlm.model, ids, block, sub, tau, vlm.settings.mask_token_id, vlm.stop_ids, 20
            )
            assert ours.token_ids == reference, (prompt, block, sub)
    assert tails == {True, False}  # prompts that end on a block boundary and prompts that do not
