"""The Gen-neG engine: Algorithm 1 with evaluation, checkpoints and resume."""
