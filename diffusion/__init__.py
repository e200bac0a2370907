"""zigscan.diffusion: stochastic interpolants, samplers, the trainer, data and metrics."""
