"""The conversion recipe (the paper's direct conversion): what makes an AR VLM a block-diffusion VLM.
Blocks, noise, the [noisy | clean] layout, the loss, the block-size schedule, the recipe's switches,
and the attention rules, which every decoding pass also follows. The training loop around it is
`fast_dvlm.train`."""
