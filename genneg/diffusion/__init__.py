"""Noise processes, samplers and guidance, all in the sigma-parameterisation x = x0 + sigma*eps."""
