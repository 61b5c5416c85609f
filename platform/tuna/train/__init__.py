"""Two-stage DeepSpeed training: data, DeepSpeed configs, the per-rank engine, local and cluster launchers."""
