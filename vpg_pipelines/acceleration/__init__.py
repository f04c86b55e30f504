"""Training-free accelerators of the next-scale sampler (issue 23)."""
