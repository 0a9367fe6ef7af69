"""The conversion recipe's pieces: blocks, noise, layout, mask, loss, and agreement with decoding."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from fast_dvlm.conversion.attention import attention_allowed
from fast_dvlm.conversion.blocks import block_layout
from fast_dvlm.conversion.layout import build_row
from fast_dvlm.conversion.noise import noise_masks
from fast_dvlm.conversion.objective import conversion_forward, layout_batch
from fast_dvlm.conversion.recipe import Recipe
from fast_dvlm.conversion.schedule import annealed_block_size
from fast_dvlm.decoding import DecodeOptions, Session
from fast_dvlm.decoding.answer import run_alone
from fast_dvlm.decoding.diffusion import BlockDiffusionDecoder
from fast_dvlm.train.data import Conversation, render

from .conftest import drawn_image
from .test_attention import spec_rule

# prompt(5 tokens, 2 of them image) | response 1 (5) | prompt 2 (2) | response 2 (3)
RESPONSE = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1], dtype=torch.bool)
VISION = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)


def test_blocks_restart_in_each_response_and_never_cross_turns():
    blocks, starts = block_layout(RESPONSE, block_size=2)
    #                                 prompt     | resp 1: [5,6] [7,8] [9] | p2 | resp 2: [12,13] [14]
    assert blocks.tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 5, 6]
    assert starts.nonzero().flatten().tolist() == [5, 7, 9, 12, 14]


def test_without_auto_truncation_blocks_run_on_across_turns():
    assert Recipe().auto_truncate  # the paper's recipe truncates (the test above)
    blocks, starts = block_layout(RESPONSE, block_size=2, auto_truncate=False)
    #                  prompt     | resp 1: [5,6] [7,8] | [9 | 10] [11 | 12] mix turns | [13,14]
    assert blocks.tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert starts.nonzero().flatten().tolist() == [5, 7, 9, 12, 13]  # answer 2's first token stays a seed
    single = RESPONSE[:10]  # one turn: cut the same either way
    truncated, running = block_layout(single, 2), block_layout(single, 2, auto_truncate=False)
    assert all(torch.equal(a, b) for a, b in zip(truncated, running, strict=True))


def test_without_auto_truncation_an_answer_block_sees_the_next_turn():
    blocks, starts = block_layout(RESPONSE, block_size=2, auto_truncate=False)
    masked = torch.zeros(15, dtype=torch.bool)
    masked[[6, 14]] = True
    noise = [masked, RESPONSE & ~starts & ~masked]
    ids = torch.arange(100, 115)
    row = build_row(torch.randn(15, 4), torch.arange(15)[None], ids, RESPONSE, VISION, blocks, noise,
                    torch.zeros(4), "response")  # fmt: skip
    # the noisy copies hold prompt 2 (10, 11) too: it shares blocks with answers, which read it
    noisy_pos = list(range(5, 15))
    block_of = blocks.tolist()
    layout = [(c, p, block_of[p]) for c in (1, 2) for p in noisy_pos] + [
        (0, p, block_of[p]) for p in range(15)
    ]
    allowed = attention_allowed(row.tokens, row.tokens)
    assert torch.equal(allowed, torch.tensor([[spec_rule(q, k) for k in layout] for q in layout]))
    assert allowed[noisy_pos.index(9), noisy_pos.index(10)]  # answer 1's end sees the next question
    assert row.diff_target.tolist() == [106, 114, 108]
    assert row.diff_pred.tolist() == [0, 8, 10 + 2]


def test_the_recipe_switch_reaches_the_training_rows(tiny_vlms, two_turn):
    vlm = tiny_vlms["qwen2_5_vl"]
    one_turn = Conversation(two_turn.images, two_turn.turns[:1])

    def mask(conversation: Conversation, recipe: Recipe) -> torch.Tensor:
        sample = render(vlm.processor, vlm.family, conversation)
        batch, _ = layout_batch(vlm.model, vlm.family, [sample], recipe, 4, [3], vlm.settings.mask_token_id)
        return batch.attention_mask

    running = Recipe(auto_truncate=False)
    # two turns: a block now holds prompt 2 beside answer tokens, so the noisy copies grow
    assert mask(two_turn, Recipe()).shape[-1] < mask(two_turn, running).shape[-1]
    assert torch.equal(mask(one_turn, Recipe()), mask(one_turn, running))


def test_training_row_mask_equals_the_spec_element_by_element():
    blocks, starts = block_layout(RESPONSE, block_size=2)
    masked = torch.zeros(15, dtype=torch.bool)
    masked[[6, 13]] = True
    noise = [masked, RESPONSE & ~starts & ~masked]
    embeds, positions = torch.randn(15, 4), torch.arange(15)[None]
    ids = torch.arange(100, 115)
    row = build_row(embeds, positions, ids, RESPONSE, VISION, blocks, noise, torch.zeros(4), "response")
    # written out by hand: two noisy copies of the 8 response positions, then the 15 clean tokens
    response_pos = [5, 6, 7, 8, 9, 12, 13, 14]
    block_of = [0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 5, 6]
    layout = [(c, p, block_of[p]) for c in (1, 2) for p in response_pos] + [
        (0, p, block_of[p]) for p in range(15)
    ]
    expected = torch.tensor([[spec_rule(q, k) for k in layout] for q in layout])
    assert torch.equal(attention_allowed(row.tokens, row.tokens), expected)
    # targets: masked token i predicted by the same copy's row for i - 1 (token shift)
    assert row.diff_target.tolist() == [106, 113, 108]
    assert row.diff_pred.tolist() == [0, 5, 8 + 2]
    assert row.ar_target.tolist() == [105, 106, 107, 108, 109, 112, 113, 114]
    assert row.ar_pred.tolist() == [16 + p - 1 for p in response_pos]
    assert row.n_maskable == 3  # 8 response tokens minus 5 block starts


def test_complementary_noise_covers_each_maskable_token_once():
    blocks, starts = block_layout(RESPONSE, block_size=2)
    maskable = RESPONSE & ~starts
    first, second = noise_masks(maskable, blocks, torch.Generator().manual_seed(3))
    assert not (first & second).any() and torch.equal(first | second, maskable)
    (single,) = noise_masks(maskable, blocks, torch.Generator().manual_seed(3), complementary=False)
    assert torch.equal(single, first)


def test_noise_level_follows_the_block_draw():
    """Masking rate ~ p = (1 - eps) t + eps per block: averaged over many draws it is ~1/2."""
    response = torch.ones(400, dtype=torch.bool)
    blocks, starts = block_layout(response, 4)
    rates = [
        noise_masks(response & ~starts, blocks, torch.Generator().manual_seed(s))[0].float().sum() / 300
        for s in range(200)
    ]
    assert abs(float(torch.stack(rates).mean()) - 0.5) < 0.03


def test_block_size_annealing_schedule():
    sizes = (2, 4, 8, 16, 32)
    seen = [annealed_block_size(k / 100, sizes) for k in range(101)]
    assert seen[0] == 2 and seen[-1] == 32 and seen == sorted(seen) and set(seen) == set(sizes)
    assert annealed_block_size(0.0, sizes, anneal=False) == 32


@pytest.fixture(scope="module")
def two_turn(tmp_path_factory) -> Conversation:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    drawn_image(4, (128, 128)).save(path)
    return Conversation(
        [Path(path)],
        [
            ("<image>\nWhat colour is the circle?", "The circle is red and the square is blue."),
            ("And the star?", "Green."),
        ],
    )


def test_response_labels_cover_answers_and_their_end(tiny_vlms, two_turn):
    vlm = tiny_vlms["qwen2_5_vl"]
    sample = render(vlm.processor, vlm.family, two_turn)
    answered = vlm.tokenizer.decode(sample.input_ids[sample.response])
    assert answered == "The circle is red and the square is blue.<|im_end|>\nGreen.<|im_end|>\n"


def test_layouts_give_the_same_loss_and_gradients(tiny_vlms, family_name, two_turn):
    """Vision only in the clean stream (and prompt-free noisy copies) changes cost, not the result:
    the same loss and the same gradient for every parameter, the vision tower's included. In float64,
    where the layouts' different summation orders leave ~1e-15 of each gradient's scale (float32: ~5e-6),
    so a real difference cannot hide under the tolerance; another noise draw shows one is caught."""
    vlm = tiny_vlms[family_name]
    model = copy.deepcopy(vlm.model).to(torch.float64)  # the shared tiny model stays as it is
    sample = render(vlm.processor, vlm.family, two_turn)

    def loss_and_grads(layout: str, seed: int) -> tuple[float, dict[str, torch.Tensor], int]:
        model.zero_grad(set_to_none=True)
        recipe = Recipe(noisy_layout=layout)
        loss, hidden, _ = conversion_forward(
            model, vlm.family, [sample], recipe, 4, [seed], vlm.settings.mask_token_id
        )
        loss.total.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        return loss.total.item(), grads, hidden.shape[1]

    def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
        """Names of the parameters whose gradients differ by more than 1e-9 of their scale."""
        assert a.keys() == b.keys()
        return [n for n in a if (a[n] - b[n]).abs().max() > 1e-9 * b[n].abs().max()]

    full, text, response = (loss_and_grads(layout, 7) for layout in ("full", "text", "response"))
    assert full[0] == pytest.approx(text[0], rel=1e-12) == pytest.approx(response[0], rel=1e-12)
    assert full[1].keys() == {name for name, p in model.named_parameters() if p.requires_grad}
    reached = {name for name, g in full[1].items() if g.abs().max() > 0}
    vision = {n for n in reached if n.startswith(("model.visual.", "model.vision_tower.", "model.multi_"))}
    assert vision and reached - vision  # both towers are in the comparison
    assert differing(text[1], full[1]) == [] and differing(response[1], full[1]) == []
    assert response[2] < text[2] < full[2]
    assert len(differing(loss_and_grads("response", 8)[1], full[1])) > len(full[1]) // 2  # a different draw


def test_training_logits_equal_decoder_block_logits(tiny_vlms, family_name, two_turn):
    """Noisy-stream logits of a block in the training forward = the decoder's cached block pass."""
    vlm = tiny_vlms[family_name]
    sample = render(vlm.processor, vlm.family, two_turn)
    block_size, mask_id = 4, vlm.settings.mask_token_id
    recipe = Recipe(complementary_mask=False)
    with torch.no_grad():
        _, hidden, batch = conversion_forward(
            vlm.model, vlm.family, [sample], recipe, block_size, [5], mask_id
        )
        # the noisy copy's rows, in clean-sequence order of the response tokens
        response_pos = sample.response.nonzero().flatten()
        noisy_rows = hidden[0, : response_pos.shape[0]]
        blocks, starts = block_layout(sample.response, block_size)
        (masked,) = noise_masks(
            sample.response & ~starts, blocks, torch.Generator().manual_seed(5), complementary=False
        )
        # the second block of the first response: its first token is the seed
        block_start = int(starts.nonzero()[1])
        span = torch.arange(block_start, block_start + block_size)
        block = torch.where(masked[span], torch.tensor(mask_id), sample.input_ids[span])
        rows = (response_pos[:, None] == span[None, :]).float().argmax(0).to(hidden.device)
        train_logits = vlm.family.lm_head(vlm.model)(noisy_rows[rows])

        # decoding: prefill the prompt and the clean tokens before the block, then one denoising pass
        session = Session(vlm.model, vlm.family)
        prefix = {k: v for k, v in sample.batch.items()}
        prefix["input_ids"] = sample.batch["input_ids"][:, :block_start]
        prefix["attention_mask"] = sample.batch["attention_mask"][:, :block_start]
        if "mm_token_type_ids" in prefix:
            prefix["mm_token_type_ids"] = sample.batch["mm_token_type_ids"][:, :block_start]
        session.prefill(vlm.family.embed(vlm.model, type(sample.batch)(prefix).to(vlm.model.device)))
        options = DecodeOptions(8, frozenset(), mask_id, block_size=block_size, sub_block_size=block_size)
        passes = BlockDiffusionDecoder(options).denoise_logits(session, block, rows=slice(None))
        decode_logits = run_alone(passes, session)
    assert bool(masked[span].any())
    torch.testing.assert_close(decode_logits, train_logits, rtol=1e-5, atol=1e-5)
    # and the layout_batch rows agree with the ones used here
    assert batch.diff_pred.numel() == int(masked.sum())


def test_layout_batch_pads_rows_of_different_lengths(tiny_vlms, two_turn):
    vlm = tiny_vlms["qwen2_5_vl"]
    long = render(vlm.processor, vlm.family, two_turn)
    short = render(vlm.processor, vlm.family, Conversation([], [("Hi", "Hello.")]))
    batch, _ = layout_batch(
        vlm.model, vlm.family, [long, short], Recipe(), 4, [1, 2], vlm.settings.mask_token_id
    )
    width = batch.embeds.shape[1]
    assert batch.attention_mask.shape == (2, 1, width, width)
    # padding queries see only themselves: every row of the mask has at least one allowed key
    assert (batch.attention_mask == 0).any(-1).all()
