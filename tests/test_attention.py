"""The attention rules, checked element by element against the rules written out by hand."""

from __future__ import annotations

import torch

from fast_dvlm.conversion.attention import (
    CLEAN,
    NOISY,
    Tokens,
    additive_mask,
    attention_allowed,
    causal_allowed,
)


def spec_rule(q, k, clean_attention="causal"):
    """The mask rules (attention.py's docstring) for one (query, key) pair, as plainly as they read
    (stream 0 = clean, >0 = noisy copy)."""
    (q_stream, q_pos, q_blk), (k_stream, k_pos, k_blk) = q, k
    q_noisy, k_noisy = q_stream > 0, k_stream > 0
    if q_noisy and k_noisy:
        return q_stream == k_stream and q_blk == k_blk
    if q_noisy and not k_noisy:
        return k_blk < q_blk
    if not q_noisy and not k_noisy:
        return k_pos <= q_pos if clean_attention == "causal" else k_blk <= q_blk
    return False


def test_matches_the_written_rules_on_a_mixed_layout():
    # clean: prompt (block 0, 4 tokens), response blocks 1 and 2 (2 tokens each);
    # noisy: two copies (a complementary pair) of the response positions, same blocks
    clean = [(0, p, 0) for p in range(4)] + [(0, 4, 1), (0, 5, 1), (0, 6, 2), (0, 7, 2)]
    noisy = [(c, p, 1 + (p - 4) // 2) for c in (1, 2) for p in range(4, 8)]
    everything = noisy + clean
    tokens = Tokens(
        torch.tensor([t[0] for t in everything]),
        torch.tensor([t[1] for t in everything]),
        torch.tensor([t[2] for t in everything]),
    )
    for rule in ("causal", "block-causal"):
        built = attention_allowed(tokens, tokens, rule)
        expected = torch.tensor([[spec_rule(q, k, rule) for k in everything] for q in everything])
        assert torch.equal(built, expected), rule


def test_cached_tokens_are_context_for_everything_new():
    # as a decoding session holds them: a prompt segment and a committed block, block ids shifted below 0
    cached = Tokens.make(CLEAN, torch.arange(5), torch.tensor([-2, -2, -2, -1, -1]))
    new = Tokens.make(NOISY, torch.arange(5, 8), 0)
    allowed = attention_allowed(new, cached + new)
    assert allowed.all()  # a denoising block sees the whole cache and itself, both ways
    clean_new = Tokens.make(CLEAN, torch.arange(5, 8), 0)
    allowed = attention_allowed(clean_new, cached + clean_new)
    assert torch.equal(allowed[:, 5:], torch.tril(torch.ones(3, 3, dtype=torch.bool)))


def test_batched_causal_rows_match_one_row_at_a_time():
    starts, keys = torch.tensor([0, 3, 5]), torch.arange(8)
    queries = starts[:, None] + torch.arange(3)[None]  # three rows of 3 new tokens
    batched = additive_mask(causal_allowed(queries, keys), torch.float32)
    assert batched.shape == (3, 1, 3, 8)
    for b in range(3):
        row = Tokens.make(CLEAN, queries[b], 0)
        alone = additive_mask(attention_allowed(row, Tokens.make(CLEAN, keys, 0)), torch.float32)
        assert torch.equal(batched[b : b + 1], alone)


def test_additive_mask_is_float_zero_or_minimum():
    allowed = torch.tensor([[True, False], [True, True]])
    mask = additive_mask(allowed, torch.float32)
    assert mask.shape == (1, 1, 2, 2) and mask.dtype == torch.float32
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 0, 1] == torch.finfo(torch.float32).min
