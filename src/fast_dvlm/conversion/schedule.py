"""Block-size annealing: a curriculum from small blocks to the final size."""

from __future__ import annotations

import math
from collections.abc import Sequence


def annealed_block_size(progress: float, sizes: Sequence[int], anneal: bool = True) -> int:
    """The block size for training progress in [0, 1]: `sizes[min(floor(sqrt(progress) * n), n - 1)]`.

    The square root spends less time on the small blocks; without annealing, always the last size.
    """
    if not anneal:
        return sizes[-1]
    index = math.floor(math.sqrt(min(max(progress, 0.0), 1.0)) * len(sizes))
    return sizes[min(index, len(sizes) - 1)]
