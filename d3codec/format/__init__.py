"""The ``.d3`` format, knowing no method: the container (sections of safetensors and JSON compressed with
zstd, spec/FORMAT.md), the metadata every archive shares (format.meta), how images, weights and latent tables
are stored (format.storage, format.weights), format 1.1's sampling noise (format.noise) and the decode
limits a reader checks before allocating (format.limits).
"""
