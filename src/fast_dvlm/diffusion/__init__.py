"""The block-diffusion side shared by training and decoding: attention rules, noise, layout, loss."""
