"""The drafting policy: how many drafted tokens a self-speculative step verifies.

A draft token i is kept only if every draft before it is (acceptance is a prefix), so with the
draft's own confidences q_1, q_2, ... (its softmax maximum per position) a step that verifies the
first m drafts commits, in expectation, 1 + q_1 + q_1 q_2 + ... + q_1...q_m tokens (the accepted
drafts plus the AR correction). It costs what the pass-cost model says its passes cost. The policy
picks the m with the most expected tokens per second, then verifies `MARGIN` more (confidences of a
small model undershoot its acceptance a little; verifying past the optimum costs little where the
cost curve is flat), never past the step's budget or a drafted stop token.

The draft itself is sized the same way: a draft pass costs what its length costs, so each step drafts
the block of 8, 16, 32, ... (up to the block size) with the most expected tokens per second, the
expectation over the accepted counts of the answer's earlier steps (for its first step, those of
recent answers' first steps, where the decoder has seen any), or drafts nothing and takes one AR
step where that is faster still: where little is accepted, or where answers decode together in one
batched pass and each weighs its share of it (`PassCost.shared`): beside 7 others, a 1-token pass
costs an eighth of an 8-token one, so short answers decode fastest as plain AR. (A round pads every
row to its longest pass, so that saving is whole only where the round's rows all take AR steps.)

`draft_policy="fixed"` verifies the whole block, as the paper's algorithms do. Neither
changes what is committed: only the verified prefix is kept, and it is exactly greedy AR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

DRAFT_POLICIES = ("auto", "fixed")
MARGIN = 1
SHORTEST_DRAFT = 8


def verify_count(
    confidence: Sequence[float], step_seconds: Callable[[int], float], most: int, margin: int = MARGIN
) -> int:
    """How many drafts to verify, from 0 to `most`: the count with the most expected tokens per
    second of `step_seconds(m)` (the step's cost when it verifies m drafts), plus `margin`."""
    most = max(0, min(most, len(confidence)))
    best, best_rate = 0, 1.0 / step_seconds(0)
    expected, survive = 1.0, 1.0
    for m in range(1, most + 1):
        survive *= confidence[m - 1]
        expected += survive
        rate = expected / step_seconds(m)
        if rate > best_rate:
            best, best_rate = m, rate
    return min(best + margin, most)


def drafts_worth_verifying(drafts: Sequence[int], stop_ids: frozenset[int], budget: int) -> int:
    """The most drafts a step can use: none past the first drafted stop token (kept, it ends the
    answer), and no more than `budget - 1` (the step commits one token beyond the accepted drafts)."""
    most = min(len(drafts), budget - 1)
    for i, token in enumerate(drafts[:most]):
        if token in stop_ids:
            return i + 1
    return max(most, 0)


def fit_draft(size: int, pending: int, block_size: int) -> int:
    """A draft of about `size` tokens that leaves room for one beyond the pending ones and stays
    within the block."""
    return min(max(size, pending + 1), block_size)


def draft_length(accepted: Sequence[int], pending: int, block_size: int, cost: Callable[[int], float]) -> int:
    """Tokens to draft this step (pending ones included): the block size with no `accepted` counts
    to go by; else, of 8, 16, 32, ... up to the block size, the one with the most expected tokens
    per second, the expectation taken over the `accepted` counts (a draft of d tokens keeps at most
    d - pending of them; a count that filled its whole draft is recorded doubled, as it was cut);
    0 where one AR pass over the pending tokens (one token per pass) beats them all."""
    if not accepted:
        return block_size
    best, best_rate, size = 0, 1.0 / cost(pending), SHORTEST_DRAFT
    while True:
        size = fit_draft(size, pending, block_size)
        room = size - pending
        kept = sum(min(a, room) for a in accepted) / len(accepted)
        rate = (kept + 1) / (cost(size) + cost(pending + min(room, round(kept) + MARGIN)))
        if rate > best_rate:
            best, best_rate = size, rate
        if size >= block_size:
            return best
        size *= 2
