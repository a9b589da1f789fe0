"""A real encoder process for tests/test_resume.py: BPTT on tiny data, checkpointing every iteration.

python tests/resume_worker.py OUT.d3 CHECKPOINT ITERATIONS
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import make_tiny_real  # noqa: E402

from d3codec.encode.pipeline import compress  # noqa: E402
from d3codec.methods.pixel import BPTTEncoder  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, checkpoint, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
    encoder = BPTTEncoder.from_options(
        "fast",
        checkpoint,
        checkpoint_seconds=0,
        iterations=iterations,
        real_per_class=8,
        images_per_class=2,
        inner_epochs=2,
        lr_decay_every=20,
    )
    compress(make_tiny_real(), out, encoder=encoder, budget=100_000, seed=3, progress=False)
