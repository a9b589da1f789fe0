"""Archive → images: ``D3Dataset`` (lazy for sampled archives), the sampler interface the sampled methods
implement, ``d3 expand``'s outputs and ``d3 verify``'s checks.
"""
