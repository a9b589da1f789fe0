"""Real data → archive: the pipeline every method shares (``d3codec.compress``), the encoder interface the
methods implement, resumable checkpoints, named seeds, federated subtasks and the default-method rule.
"""
