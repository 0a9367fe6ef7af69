"""The drafting policy: how many drafted tokens a self-speculative step verifies.

A draft token i is kept only if every draft before it is (acceptance is a prefix), so with the
draft's own confidences q_1, q_2, ... (its softmax maximum per position) a step that verifies the
first m drafts commits, in expectation, 1 + q_1 + q_1 q_2 + ... + q_1...q_m tokens (the accepted
drafts plus the AR correction). It costs what the pass-cost model says its passes cost. The policy
picks the m with the most expected tokens per second, then verifies `MARGIN` more (confidences of a
small model undershoot its acceptance a little; verifying past the optimum costs little where the
cost curve is flat), never past the step's budget or a drafted stop token.

The draft itself is shortened the same way: a draft pass costs what its length costs, and a step
rarely keeps many more drafts than the previous one did, so each step drafts the shortest block of
8, 16, 32, ... (up to the block size) that holds twice the previous step's committed tokens.

`draft_policy="fixed"` verifies the whole block, as the algorithms in SPEC.md state them. Neither
changes what is committed: only the verified prefix is kept, and it is exactly greedy AR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

DRAFT_POLICIES = ("auto", "fixed")
MARGIN = 1
SHORTEST_DRAFT = 8


def expected_tokens(confidence: Sequence[float], m: int) -> float:
    """Tokens a step commits in expectation when it verifies the first `m` drafts."""
    expected, survive = 1.0, 1.0
    for q in confidence[:m]:
        survive *= q
        expected += survive
    return expected


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


def draft_length(last_accepted: int | None, pending: int, block_size: int) -> int:
    """Tokens to draft this step (pending ones included): the block size on the first step, then the
    shortest of 8, 16, 32, ... above `pending + 2 * (last_accepted + 1)`, at most the block size."""
    if last_accepted is None:
        return block_size
    size, wanted = SHORTEST_DRAFT, pending + 2 * (last_accepted + 1)
    while size <= wanted and size < block_size:
        size *= 2
    return min(max(size, pending + 1), block_size)
