"""How well and how fast a model answers the procedural tasks: `accuracy` scores a split's answers,
`bench` is `fast-dvlm bench` (every decoding mode on one split, in one run). Real benchmarks go
through the lmms-eval plugin (`fast_dvlm.integrations.lmms_eval`)."""
