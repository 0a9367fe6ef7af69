"""Issue 18's speed work changes speed only: the lean path equals transformers' forward, the drafting
policy keeps the speculative modes equal to greedy AR whatever it picks, the cost model is kept on
disk and read back."""

from __future__ import annotations

import pytest
import torch

from fast_dvlm.decoding import cost as cost_module
from fast_dvlm.decoding.cost import PassCost, model_pass_cost
from fast_dvlm.decoding.lean import LeanTextModel
from fast_dvlm.decoding.policy import draft_length, drafts_worth_verifying, verify_count
from fast_dvlm.decoding.session import Session

SPEC_MODES = ["spec-linear", "spec-quadratic"]


def test_lean_path_runs_every_family(tiny_vlms, family_name):
    vlm = tiny_vlms[family_name]
    assert LeanTextModel.supports(vlm.family.language_model(vlm.model))
    assert Session(vlm.model, vlm.family).lean is not None
    assert Session(vlm.model, vlm.family, engine="transformers").lean is None


@pytest.mark.parametrize("mode", ["ar", "diffusion", *SPEC_MODES])
def test_lean_path_equals_transformers(tiny_vlms, family_name, images, mode):
    """Same tokens and passes on both engines, every mode, with and without images."""
    vlm = tiny_vlms[family_name]
    for n_images in (0, 1):
        settings = {"block_size": 4, "sub_block_size": 2, "draft_policy": "fixed"}
        lean = vlm.generate("What is shown?", images[:n_images], mode, 21, **settings)
        eager = vlm.generate("What is shown?", images[:n_images], mode, 21, engine="transformers", **settings)
        assert lean.token_ids == eager.token_ids, n_images
        assert lean.nfe == eager.nfe


def test_lean_pass_matches_transformers_logits(tiny_vlms, family_name):
    """One pass each way over the same cache: the logits agree to float rounding, with a mask,
    without one (causal) and after a rollback over the preallocated buffer."""
    vlm = tiny_vlms[family_name]
    sessions = [Session(vlm.model, vlm.family, engine=e) for e in ("lean", "transformers")]
    ids = torch.arange(3, 40) % 50
    with torch.inference_mode():
        outs = []
        for s in sessions:
            s.forward(ids[:20], s.next_positions(20))
            s.forward(ids[20:25], s.next_positions(5))
            s.rollback(20)  # the rolled-back slots are overwritten by the next pass
            causal = s.forward(ids[25:], s.next_positions(12))
            mask = torch.zeros(1, 1, 4, s.cache_len + 4)
            mask[..., -3:] = torch.finfo(torch.float32).min  # a hand-made mask: new tokens see the cache only
            masked = s.forward(ids[:4], s.next_positions(4), mask)
            outs.append((causal, masked, s.cache_len))
    (lc, lm, ll), (ec, em, el) = outs
    assert ll == el
    torch.testing.assert_close(lc, ec, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lm, em, rtol=1e-4, atol=1e-4)


def test_lean_cache_grows_past_its_capacity(tiny_vlms, monkeypatch):
    vlm = tiny_vlms["qwen2_5_vl"]
    monkeypatch.setattr(LeanTextModel, "CAPACITY", 8)
    reference = vlm.generate("Describe.", [], "ar", 30, engine="transformers").token_ids
    assert vlm.generate("Describe.", [], "ar", 30).token_ids == reference
    assert vlm.generate("Describe.", [], "spec-linear", 30, block_size=16).token_ids == reference


def flat(seconds: float = 1e-3) -> PassCost:
    return PassCost((1, 64), (seconds, seconds))


def steep() -> PassCost:
    return PassCost((1, 2, 64), (1e-3, 1e-1, 10.0))  # every extra token is dear: verify almost nothing


@pytest.mark.parametrize("curve", [flat, steep])
@pytest.mark.parametrize("block_size", [2, 4, 8, 32])
def test_policy_keeps_speculation_lossless(tiny_vlms, family_name, images, monkeypatch, curve, block_size):
    """Whatever the cost curve makes the policy choose, the answers are greedy AR's."""
    vlm = tiny_vlms[family_name]
    monkeypatch.setattr(PassCost, "of", classmethod(lambda cls, session, refresh=False: curve()))
    for n_images, length in ((0, 37), (1, 1), (1, 2), (2, 23)):
        prompt = f"Question {n_images}: what is shown?"
        reference = vlm.generate(prompt, images[:n_images], "ar", length).token_ids
        for mode in SPEC_MODES:
            out = vlm.generate(
                prompt, images[:n_images], mode, length, block_size=block_size, sub_block_size=1
            )
            assert out.token_ids == reference, (mode, n_images, length)


def test_policy_shortens_passes_where_they_are_dear(tiny_vlms, images, monkeypatch):
    """Fixed: every pass is a whole block. Auto on a steep cost curve: verify passes of the seed and
    at most one draft, drafts shortened; the same answer for fewer tokens run through the model."""
    vlm = tiny_vlms["qwen2_5_vl"]
    lengths: list[int] = []
    forward = Session.forward
    monkeypatch.setattr(
        Session, "forward", lambda s, ids, *a, **k: lengths.append(len(ids)) or forward(s, ids, *a, **k)
    )
    fixed = vlm.generate("Describe.", images[:1], "spec-linear", 40, draft_policy="fixed")
    fixed_lengths, lengths[:] = list(lengths), []
    monkeypatch.setattr(PassCost, "of", classmethod(lambda cls, session, refresh=False: steep()))
    auto = vlm.generate("Describe.", images[:1], "spec-linear", 40)
    assert auto.token_ids == fixed.token_ids
    assert set(fixed_lengths) == {32}
    assert min(lengths) <= 2 and sum(lengths) < sum(fixed_lengths) / 2


def test_verify_count_edge_cases():
    cost = flat()
    assert verify_count([1.0] * 10, lambda m: cost(1 + m), most=10) == 10  # sure drafts, flat cost: all
    assert verify_count([0.0] * 10, lambda m: cost(1 + m), most=10, margin=0) == 0  # hopeless: none
    assert verify_count([0.0] * 10, lambda m: cost(1 + m), most=10) == 1  # plus the margin
    assert verify_count([0.9] * 10, lambda m: cost(1 + m), most=0) == 0  # the budget allows none
    assert verify_count([0.9] * 3, lambda m: cost(1 + m), most=10) == 3  # no more than was drafted
    dear = steep()  # 1 draft verified costs 2 tokens' pass: worth it only for a confident draft
    assert verify_count([0.99, 0.0], lambda m: dear(1 + m), most=2, margin=0) == 0
    assert verify_count([0.5, 0.5], lambda m: 1.0 + m, most=2, margin=0) == 0  # 1/1 beats 1.5/2 and 1.75/3
    assert verify_count([0.9, 0.9], lambda m: 1.0 + 0.1 * m, most=2, margin=0) == 2
    # expected tokens 1, 1.5, 1.75, 2.0 for m = 0..3 (a sure third draft adds the second's 0.25)
    assert verify_count([0.5, 0.5, 1.0], lambda m: 1.0 + 0.25 * m, most=3, margin=0) == 1  # 1.5/1.25 best
    assert verify_count([0.5, 0.5, 1.0], lambda m: 1.0 + 0.1 * m, most=3, margin=0) == 3  # 2.0/1.3 best


def test_drafts_worth_verifying():
    stops = frozenset({7})
    assert drafts_worth_verifying([1, 2, 3, 4], stops, budget=10) == 4
    assert drafts_worth_verifying([1, 7, 3, 4], stops, budget=10) == 2  # up to the drafted stop token
    assert drafts_worth_verifying([1, 2, 3, 4], stops, budget=3) == 2  # 2 drafts + the correction = 3
    assert drafts_worth_verifying([1, 2, 3, 4], stops, budget=1) == 0
    assert drafts_worth_verifying([], stops, budget=5) == 0


def test_draft_length():
    curve = PassCost((1, 8, 16, 32), (1.0, 1.2, 1.5, 2.5))  # a CPU-like curve: 32 tokens cost 2.5x one
    assert draft_length([], 1, 32, curve) == 32  # the first step drafts the whole block
    assert draft_length([0, 0], 1, 32, curve) == 0  # nothing is accepted: no draft, one AR pass
    assert draft_length([2, 2], 1, 32, curve) == 8  # a few tokens a step: the cheapest draft
    assert draft_length([40, 40], 1, 32, curve) == 32  # long runs: the whole block
    assert draft_length([40], 1, 4, curve) == 4  # never past the block size
    assert draft_length([2], 9, 32, flat()) == 20  # past the 9 pending tokens: 10 (1 draft), 20, 32
    assert draft_length([40], 1, 32, flat()) == 32  # where passes cost alike, the longest that is used
    assert draft_length([10, 10], 1, 32, flat()) == 16


def test_shared_pass_cost_is_each_answers_share_of_the_batched_pass():
    curve = PassCost((1, 8, 16, 32), (1.0, 1.2, 1.5, 2.5))
    assert curve.shared(1) is curve
    assert curve.shared(8)(4) == pytest.approx(curve(32) / 8)
    assert curve.shared(8)(32) == pytest.approx((2.5 + (256 - 32) * (1.0 / 16)) / 8)  # extrapolated
    assert draft_length([10, 10], 1, 32, curve) == 16
    assert draft_length([10, 10], 1, 32, curve.shared(8)) == 8  # beside 7 others, long drafts are dear
    assert draft_length([2, 2], 1, 32, curve.shared(8)) == 0  # and short runs decode fastest as AR


def test_batched_answers_weigh_their_share_of_the_pass(tiny_vlms, images, monkeypatch):
    """In `generate_batch` each answer's policy sees the rows decoding with it; alone, one row."""
    from fast_dvlm.decoding import spec_linear

    vlm = tiny_vlms["qwen2_5_vl"]
    rows: list[int] = []
    real = spec_linear.answer_pass_cost
    monkeypatch.setattr(spec_linear, "answer_pass_cost", lambda s: rows.append(s.batch_rows) or real(s))
    prompts = [f"Question {i}: what is shown?" for i in range(5)]
    alone = [vlm.generate(p, images[:1], "spec-linear", 24).token_ids for p in prompts]
    assert set(rows) == {1}
    rows.clear()
    batched = vlm.generate_batch(prompts, [images[:1]] * 5, "spec-linear", 24)
    assert [b.token_ids for b in batched] == alone
    assert max(rows) == 5 and set(rows) <= {1, 2, 3, 4, 5}


def test_answers_take_ar_steps_where_drafts_do_not_pay_and_retry_drafts(tiny_vlms, images, monkeypatch):
    """On a cost curve where every drafted token is dear, a step drafts nothing once the answer's
    history says drafts are not kept (one 1-token pass, one token); after `AR_RUN` such steps in a row
    a draft is tried again. The answer stays greedy AR's."""
    from fast_dvlm.decoding import spec_linear

    vlm = tiny_vlms["qwen2_5_vl"]
    monkeypatch.setattr(spec_linear, "answer_pass_cost", lambda session: PassCost((1, 64), (1.0, 64.0)))
    out = vlm.generate("Describe.", images[:1], "spec-linear", 40)
    assert out.token_ids == vlm.generate("Describe.", images[:1], "ar", 40).token_ids
    steps = [(t.tokens, t.passes) for t in out.trace]
    assert steps[0][1] == 2  # the first step has no history: a whole-block draft and its verify pass
    ar_steps = [k for k, step in enumerate(steps) if step == (1, 1)]
    assert len(ar_steps) >= spec_linear.AR_RUN
    drafts_after_ar = [k for k in range(1, len(steps)) if steps[k][1] == 2 and steps[k - 1] == (1, 1)]
    if len(steps) > spec_linear.AR_RUN + 1:
        assert drafts_after_ar and drafts_after_ar[0] == 1 + spec_linear.AR_RUN  # 8 AR steps, then a draft
    if len(steps) > spec_linear.AR_RUN + 2:
        assert steps[spec_linear.AR_RUN + 2] == (1, 1)  # and the run of AR steps starts again


def test_first_drafts_are_sized_by_earlier_answers_first_steps(tiny_vlms, images, monkeypatch):
    """One decoder serves a whole `generate_batch`: an answer joining later sizes its first draft by
    what earlier answers' first steps kept (a fresh decoder drafts a whole block first); the answers
    stay their batch-1 ones."""
    from fast_dvlm.decoding import spec_linear

    vlm = tiny_vlms["qwen2_5_vl"]
    histories: list[int] = []
    real = spec_linear.draft_length
    spy = lambda accepted, *a: histories.append(len(accepted)) or real(accepted, *a)  # noqa: E731
    monkeypatch.setattr(spec_linear, "draft_length", spy)
    prompts = [f"Picture {i}: describe it." for i in range(6)]
    alone = [vlm.generate(p, images[:1], "spec-linear", 20).token_ids for p in prompts]
    histories.clear()
    batched = vlm.generate_batch(prompts, [images[:1]] * 6, "spec-linear", 20, max_batch_size=2)
    assert [b.token_ids for b in batched] == alone
    assert histories[0] == 0 and max(histories) >= 2  # the first answers had no prior; later ones do


def test_pass_cost_is_measured_once_and_kept_on_disk(tiny_vlms, tmp_path, monkeypatch):
    vlm = tiny_vlms["qwen2_5_vl"]
    monkeypatch.setenv("FAST_DVLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cost_module, "_MEMORY", {})
    measured = model_pass_cost(vlm.model, vlm.family)
    files = list((tmp_path / "pass_cost").glob("*.json"))
    assert len(files) == 1 and measured.sizes == cost_module.SIZES
    assert all(s > 0 for s in measured.seconds)
    monkeypatch.setattr(cost_module, "_MEMORY", {})
    monkeypatch.setattr(cost_module, "measure", lambda session: pytest.fail("measured again"))
    assert model_pass_cost(vlm.model, vlm.family) == measured  # read back from disk
    monkeypatch.setattr(cost_module, "measure", lambda session: (1.0,) * len(cost_module.SIZES))
    assert model_pass_cost(vlm.model, vlm.family, refresh=True).seconds[0] == 1.0


def test_pass_cost_measurement_leaves_the_session_as_it_was(tiny_vlms):
    vlm = tiny_vlms["qwen2_5_vl"]
    session = Session(vlm.model, vlm.family)
    with torch.inference_mode():
        session.forward(torch.arange(5), session.next_positions(5))
    before = (session.cache_len, session.nfe, session.next_block, session.blocks.tolist())
    cost_module.measure(session)
    assert (session.cache_len, session.nfe, session.next_block, session.blocks.tolist()) == before


def test_pass_cost_interpolates():
    cost = PassCost((1, 4, 8), (1.0, 4.0, 6.0))
    assert cost(1) == 1.0 and cost(2) == 2.0 and cost(6) == 5.0 and cost(16) == 10.0
