"""The default budget of `fast-dvlm experiments`, sized for 2 CPU cores and about three hours.

Estimated: a conversion step of the demo model takes about 2 s at batch 32, so 8 variants x 400
steps, with vision in both streams slower and each run's load and save, about 2 hours; scoring,
25 mode runs (the base's ar, then ar, diffusion and spec-linear for each variant) x the whole test
split (11 tasks x 60 items), the multi-turn set (3 models x 160 conversations) and the sweep (30
settings x 11 tasks x 20 items), under an hour; the data and the multi-turn set's check against the
training images, 3 minutes. Measured on the shipped demo (docs/RESULTS.md, 2 torch threads):
training 106 min (median steps 1.7-1.9 s, 2.9 s with vision in both streams); scoring the base and
the variants at these defaults 13 min, the sweep 6 min. The demo's own conversion runs 500-600
steps; each variant here gets 400, the same for every variant, rather than dropping any variant.
"""

DEFAULT_STEPS = 400
DEFAULT_PER_TASK = 60  # test items per task for each variant: the whole test split
MULTI_TURN_PER_TASK = 20
SWEEP_PER_TASK = 20  # 5 left differences of 2 items per task (~4 points) to chance
