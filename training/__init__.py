"""How the bundled tiny model was made: the emoji data set and the training script (docs/benchmarks.md)."""
