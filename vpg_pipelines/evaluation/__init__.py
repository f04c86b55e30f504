"""Benchmark sampling at scale (``vpg eval``): sharded, resumable sampling through Accelerate and offline metrics.

- ``sharding``: fixed chunks of sample indices, per-sample seeds, chunks dealt to processes;
- ``run_folder``: the output folder: ``run.json``, the manifest of finished chunks, atomic commits;
- ``protocols/``: one module per benchmark (ImageNet, GenEval, DPG-Bench, VBench): inputs, presets, writers;
- ``sampler``: the loop every process runs, with the overall progress bar;
- ``pack``: ImageNet samples -> the ADM evaluator's ``.npz``;
- ``image_sets`` / ``fid``: image folders and ``.npz`` batches; FID and Inception Score via torchmetrics;
- ``frechet`` / ``emoji_classifier``: the bundled demo model's classifier-space Fréchet distance;
- ``sweep``: a grid over ``vpg_scale`` x ``vpg_corruption`` through the same sampler, table and plot;
- ``cli``: the ``vpg eval`` subcommands.
"""
