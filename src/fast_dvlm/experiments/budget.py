"""The default budget of `fast-dvlm experiments`, sized for 2 CPU cores and about three hours.

A conversion step of the coming demo model takes about 2 s at batch 32: 8 variants x 400 steps x
2 s = 107 min, and vision in both streams plus each run's load and save add about 10% (~118 min).
Scoring, at about 0.25 s an answer: 25 mode runs (the base's ar, then ar, diffusion and spec-linear
for each variant) x 11 tasks x 30 items = 8,250 answers (~34 min); the multi-turn set, 3 models x 8
tasks x 10 conversations x 2.5 answers = 600 (~3 min); the sweep, 30 settings x 11 tasks x 5 items =
1,650 answers (~7 min). With the data (~2 min) and the multi-turn set's check against the training
images (~1 min): about 165 minutes. The demo's own conversion runs 500-600 steps; each variant here
gets 400, the same for every variant, rather than dropping any variant.
"""

DEFAULT_STEPS = 400
DEFAULT_PER_TASK = 30  # test items per task for each variant (the test split has 60)
MULTI_TURN_PER_TASK = 10
SWEEP_PER_TASK = 5
