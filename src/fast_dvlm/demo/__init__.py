"""The demo models: the recipe that builds them from scratch (`recipe`, with its vision
pre-training stage in `vision_pretrain`) and the `fast-dvlm demo` showcase that runs them (`show`)."""
