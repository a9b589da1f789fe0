"""d3codec agrees with the test vectors: it expands every positive archive vector as recorded (images,
labels, soft labels, the noise and priors of each draw) and refuses every negative one."""

import json
from pathlib import Path

import pytest
import torch

from d3codec import D3Dataset
from d3codec.decode.dataset import decode_archive
from d3codec.errors import D3FormatError
from d3codec.format.limits import DEFAULT_LIMITS
from d3codec.format.meta import open_archive

SPEC = Path(__file__).resolve().parent.parent / "spec" / "vectors"
VECTORS = json.loads((SPEC / "vectors.json").read_text())["vectors"]
DTYPES = {"U8": torch.uint8, "I8": torch.int8, "I32": torch.int32, "F16": torch.float16, "F32": torch.float32}


def tensor(spec: dict) -> torch.Tensor:
    return torch.tensor(spec["values"], dtype=DTYPES[spec["dtype"]]).reshape(spec["shape"])


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["archive"] == "read"], ids=lambda v: v["file"])
def test_d3codec_expands_every_archive_vector_as_recorded(vector):
    data = (SPEC / vector["file"]).read_bytes()
    for want in vector["expect"]:
        ds = D3Dataset(data, samples_per_class=want["samples_per_class"], seed=want["seed"])
        assert ds.labels.tolist() == want["labels"]
        assert torch.allclose(ds.images, tensor(want["images"]), rtol=0, atol=1e-6)
        if want["soft_labels"] is None:
            assert ds.soft_labels is None
        else:
            assert torch.allclose(ds.soft_labels, tensor(want["soft_labels"]), rtol=0, atol=1e-6)
        if "noise" in want:
            reader, meta = open_archive(data)
            with reader:
                sampler = decode_archive(reader, meta, 1, 0, "cpu", DEFAULT_LIMITS)[4]
            if meta["method"] == "d3":
                noise = [
                    sampler.group_noise(i, want["samples_per_class"] or sg.plan.priors_per_class, want["seed"])[1]
                    for i, sg in enumerate(sampler.groups)
                ]
                noise = [n.reshape(-1, n.shape[-1]) for n in noise]
            else:
                noise = [sampler.noise(want["samples_per_class"] or sampler.default, want["seed"])]
            assert all(torch.equal(a, tensor(b)) for a, b in zip(noise, want["noise"]))


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if v["archive"] == "refuse" or v["container"] == "refuse"], ids=lambda v: v["file"]
)
def test_d3codec_refuses_every_negative_vector(vector):
    with pytest.raises(D3FormatError):
        D3Dataset((SPEC / vector["file"]).read_bytes())
