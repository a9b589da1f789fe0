"""Named random streams of an encode, derived from the run's ``--seed``.

Each random stream an encoder uses (its sampling of real images and augmentations, a subtask's
draws, a teacher's training, the initialisations BPTT re-draws) has a name; its torch seed is a
hash of (name, index, seed), so that streams never share a seed by accident, a new stream leaves
the others unchanged, and no offset constants have to agree between two places. Decoding does not
use these: an archive's sampling noise is defined by spec/FORMAT.md §5.4 (d3codec.format.noise).
"""

from __future__ import annotations

import hashlib

import torch

# the streams, by name (what each drives)
STREAMS = {
    "dm": "DM: the initial real images, real batches and augmentations; the random networks (global generator)",
    "dm-real-cache": "DM: the real images cached for datasets on disk",
    "dm-mask": "DM: the real images a dct-variance formation ranks its DCT coefficients on",
    "bptt": "BPTT: initial images, real batches, the fixed θ₀",
    "bptt-init": "BPTT random init: θ₀ of outer iteration `index`",
    "d3-group": "D3 subtask `index`: warm start, priors, matching draws, its teacher, its random networks",
    "d3-real-cache": "D3 subtask `index`: the real images cached for datasets on disk",
    "d2m": "D2M: the random networks, the teacher (index 1: fine-tuning's random networks under several ranks)",
    "d2m-classes": "D2M fine-tuning iteration `index`: the classes it matches (classes_per_iteration)",
    "d2m-pretrain": "D2M pre-training: real batches, noise, labels",
    "d2m-finetune": "D2M fine-tuning: noise, real batches, augmentations (index r: rank r > 0 of several)",
    "labeller": "the stored labeller's training (d3codec.encode.labelled)",
}


def stream_seed(seed: int, name: str, index: int = 0) -> int:
    """The torch seed of stream ``name`` (one of STREAMS), number ``index``, of a run seeded ``seed``:
    an integer in [0, 2^63). Raises: KeyError for an unknown name (add it to STREAMS)."""
    if name not in STREAMS:
        raise KeyError(f"unknown random stream {name!r}; the streams are {', '.join(STREAMS)}")
    digest = hashlib.sha256(f"d3codec/{name}/{index}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, name: str, index: int = 0) -> torch.Generator:
    """A CPU torch.Generator seeded with :func:`stream_seed`."""
    return torch.Generator().manual_seed(stream_seed(seed, name, index))
