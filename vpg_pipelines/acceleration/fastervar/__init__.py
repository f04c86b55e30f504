"""FasterVAR / StageVAR (ICML 2026): stage-aware CFG off, scale skipping and low-rank token mixing."""
