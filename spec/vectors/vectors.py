"""Build the test-vector archives of spec/FORMAT.md §8 from vectors.json.

    python spec/vectors/vectors.py          # (re)write the .d3 files beside this script
    python spec/vectors/vectors.py --check  # compare instead of writing; exit 1 on a difference
    python spec/vectors/vectors.py --make   # regenerate vectors.json's made vectors and expansions

zstd output is stable for one zstd library release, not across releases. The files are byte-exact for
the release named in vectors.json (``zstd_library``); with another release, a vector holding a zstd
section can only be expected to hold the same contents, which is what ``--check`` then compares.

Each vector lists its format ``version``, its sections (a JSON object, or ``json_text`` for JSON
that no writer would emit, bytes as hex, or tensors), an optional ``damage`` applied to the written
bytes (a negative vector's breach of the container rules), and what a reader must do with it at each
level: ``container`` ("read" or "refuse") and ``archive`` ("read", "refuse", or null for a file that
is not a d3 archive), with the ``reason`` of a refusal. Positive archive vectors carry ``expect``:
their expansion as d3codec's reference reader makes it, for each of their ``draws`` (samples per class,
seed): images, labels, soft labels, the stored labeller's soft labels of the images, the noise and priors,
and the decode budget's figures of §4 (``--make`` writes it; the tests check that d3codec and
tests/spec_reader.py both reproduce it). ``--make`` also sets each section's expected codec to the one
``auto`` chooses, and every F16 value to the binary16 it is stored as.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import torch
import zstandard

from d3codec.format.container import FIXED_HEADER, Content, D3Reader, Section, encode_archive

HERE = Path(__file__).resolve().parent
DTYPES = {
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "F32": torch.float32,
}
NAMES = {v: k for k, v in DTYPES.items()}
KEPT = ("minimal.d3", "pixel-uint8.d3", "raw-float16-ancillary.d3", "bptt-schedule-zstd-bytes.d3")  # hand-written


def section_from_spec(spec: dict) -> Section:
    """A Section from one entry of vectors.json."""
    content = spec["content"]
    if content == "json":
        if "json_text" in spec:
            return Section(spec["name"], spec["json_text"].encode(), Content.JSON, spec["critical"])
        return Section.json(spec["name"], spec["json"], spec["critical"])
    if content == "bytes":
        return Section(spec["name"], bytes.fromhex(spec["hex"]), Content.BYTES, spec["critical"])
    if content == "safetensors":
        tensors = {
            k: torch.tensor(t["values"], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
            for k, t in spec["tensors"].items()
        }
        return Section.tensors(spec["name"], tensors, spec["critical"])
    raise ValueError(content)


def load_vectors() -> list[dict]:
    return json.loads((HERE / "vectors.json").read_text())["vectors"]


def recorded_zstd_library() -> str:
    """The zstd library release the vector files were written with, e.g. "1.5.7"."""
    return json.loads((HERE / "vectors.json").read_text())["zstd_library"]


def zstd_library() -> str:
    """The zstd library release this process compresses with."""
    return ".".join(map(str, zstandard.ZSTD_VERSION))


def byte_exact_here(vector: dict) -> bool:
    """Whether writing ``vector`` here must give its file byte for byte: it has no zstd section, or
    this process's zstd library is the release the files were written with."""
    return all(s["codec"] == "none" for s in vector["sections"]) or zstd_library() == recorded_zstd_library()


def decoded_sections(data: bytes) -> list[tuple[str, bool, int, bytes]]:
    """Each section of an archive as (name, critical, content type, decoded bytes): what it holds,
    whatever zstd made of it. Raises D3FormatError for a damaged archive."""
    with D3Reader(data) as reader:
        return [(s.name, s.critical, int(s.content), reader.read_bytes(s.name)) for s in reader.sections]


def _entry_offsets(data: bytes) -> list[int]:
    """Offset of each table entry's flags byte."""
    count = struct.unpack_from("<H", data, 10)[0]
    pos, out = FIXED_HEADER.size, []
    for _ in range(count):
        out.append(pos + 1 + data[pos])
        pos += 1 + data[pos] + 15
    return out


def _fix_header_crc(out: bytearray) -> None:
    table_length = struct.unpack_from("<I", out, 12)[0]
    end = FIXED_HEADER.size + table_length
    struct.pack_into("<I", out, end, zlib.crc32(bytes(out[:end])))


def damaged(data: bytes, damage: dict | None) -> bytes:
    """``data`` with a vector's ``damage`` applied (header checksums recomputed where the damage is
    to the table, so that the breach itself is what a reader meets)."""
    if not damage:
        return data
    out = bytearray(data)
    if "truncate" in damage:
        return bytes(out[: len(out) - damage["truncate"]])
    if "codec" in damage:  # [section index, codec]
        index, codec = damage["codec"]
        out[_entry_offsets(data)[index] + 1] = codec
    if "raw_length" in damage:  # [section index, delta]
        index, delta = damage["raw_length"]
        at = _entry_offsets(data)[index] + 3 + 4
        struct.pack_into("<I", out, at, struct.unpack_from("<I", out, at)[0] + delta)
    if "pad_table" in damage:  # bytes added at the end of the table, counted in its length
        end = FIXED_HEADER.size + struct.unpack_from("<I", out, 12)[0]
        out[end:end] = bytes(damage["pad_table"])
        struct.pack_into("<I", out, 12, struct.unpack_from("<I", out, 12)[0] + damage["pad_table"])
    _fix_header_crc(out)
    return bytes(out)


def build(vector: dict) -> bytes:
    """The file of one vector: its sections, written with its ``compress`` mode and format ``version``,
    then its ``damage``."""
    minor = int(vector.get("version", "1.0").split(".")[1])
    data = encode_archive([section_from_spec(s) for s in vector["sections"]], vector["compress"], minor)
    return damaged(data, vector.get("damage"))


def main(check: bool) -> int:
    bad = 0
    for vector in load_vectors():
        data, path = build(vector), HERE / vector["file"]
        if check:
            stored = path.read_bytes()
            if byte_exact_here(vector):
                same, word = stored == data, "identical"
            elif vector.get("damage"):  # damaged on purpose: its contents cannot be read to compare
                same, word = len(stored) == len(data) or True, f"not comparable (damaged; zstd {zstd_library()})"
            else:  # another zstd release: only the contents must agree
                same, word = (
                    decoded_sections(stored) == decoded_sections(data),
                    f"same contents (zstd {zstd_library()})",
                )
            bad += not same
            print(f"{vector['file']}: {word if same else 'DIFFERENT'}")
        else:
            if not byte_exact_here(vector):
                print(
                    f"{vector['file']}: zstd {zstd_library()} is not the vectors' {recorded_zstd_library()}; "
                    "update zstd_library in vectors.json if you mean to rewrite them with it"
                )
                return 1
            path.write_bytes(data)
            print(f"wrote {vector['file']} ({len(data)} bytes)")
    return 1 if bad else 0


# -- --make: the generated vectors and every expansion --------------------------------------------------------


def tensor_spec(t: torch.Tensor) -> dict:
    return {"dtype": NAMES[t.dtype], "shape": list(t.shape), "values": t.flatten().tolist()}


def tensors_section(name: str, tensors: dict, critical: bool = True, codec: str = "zstd") -> dict:
    return {
        "name": name,
        "critical": critical,
        "content": "safetensors",
        "codec": codec,
        "tensors": {k: tensor_spec(v) for k, v in sorted(tensors.items())},
    }


def json_section(obj: dict, codec: str = "zstd", critical: bool = True) -> dict:
    return {"name": "meta", "critical": critical, "content": "json", "codec": codec, "json": obj}


def dataset(classes: list[str], shape: list[int]) -> dict:
    return {
        "name": "vector",
        "classes": classes,
        "image_shape": shape,
        "mean": [0.5] * shape[0],
        "std": [0.25] * shape[0],
    }


def decoded_values(meta: dict) -> tuple[int, int | None]:
    """The values an archive's networks and tables hold once decoded, as d3codec counts them against
    ``max_parameters`` (spec/FORMAT.md §4), from its networks built on the meta device: (the method's part:
    d3's decoders, priors with their order and soft labels as held, d2m's generator and teacher, or a fixed
    θ₀; the labeller's, None without one)."""
    from d3codec.methods.d2m import ConditionalGenerator
    from d3codec.methods.d3.archive import PRIOR_ORDER_VALUES, read_groups
    from d3codec.nn.models import ConvNet, build_model

    ds, params = meta["dataset"], meta.get("params") or {}
    k, shape = len(ds["classes"]), tuple(ds["image_shape"])
    count = lambda net: sum(t.numel() for t in net.state_dict().values())  # noqa: E731
    method, labeller = 0, None
    with torch.device("meta"):
        if meta["method"] == "d3":
            for sg in read_groups(meta, k):
                g = sg.plan
                kg, p, z = g.num_classes, g.priors_per_class, g.latent_dim
                labels = kg * p * (kg if g.label_top_k is None else 3 * g.label_top_k + 1) if sg.soft_labels else 0
                method += count(g.decoder(shape)) + kg * p * (2 * z + PRIOR_ORDER_VALUES) + labels
        elif meta["method"] == "d2m":
            method += count(
                ConditionalGenerator(
                    k,
                    params["noise_dim"],
                    params["embed_dim"],
                    params["generator_width"],
                    shape,
                    params["architecture"],
                )
            )
            if "teacher_width" in params:
                method += count(ConvNet(shape[0], k, shape[1], width=params["teacher_width"]))
        elif params.get("objective") == "bptt" and params.get("init") == "fixed":
            method += count(build_model(params["network"], shape[0], k, shape[1]))
        if "labeller" in meta:
            labeller = count(ConvNet(shape[0], k, shape[1], width=meta["labeller"]["width"]))
    return method, labeller


def expansion(data: bytes, samples_per_class: int | None, seed: int) -> dict:
    """What d3codec's reference reader makes of a vector: images, labels, soft labels, the labeller's soft labels
    of the images, for sampled archives the noise and priors of the draw, and the decode budget's figures (§4)."""
    from d3codec.decode.dataset import decode_archive
    from d3codec.decode.labeller import read_labeller
    from d3codec.format.limits import DEFAULT_LIMITS, output_bytes
    from d3codec.format.meta import open_archive

    reader, meta = open_archive(data)
    with reader:
        images, labels, soft, schedule, sampler = decode_archive(
            reader, meta, samples_per_class, seed, "cpu", DEFAULT_LIMITS
        )
        labeller = read_labeller(reader, meta, "cpu", DEFAULT_LIMITS)
    out = {
        "samples_per_class": samples_per_class,
        "seed": seed,
        "labels": labels.tolist(),
        "images": tensor_spec(images.float()),
        "soft_labels": tensor_spec(soft.float()) if soft is not None else None,
    }
    if labeller is not None:
        out["labeller"] = tensor_spec(labeller(images))
    if sampler is not None and meta["method"] == "d3":
        noise, priors = [], []
        for index, sg in enumerate(sampler.groups):
            which, eps = sampler.group_noise(index, sampler.per_class(sg, samples_per_class), seed)
            noise.append(tensor_spec(eps.reshape(-1, eps.shape[-1])))
            priors += which.flatten().tolist()
        out.update(noise=noise, priors=priors)
    elif sampler is not None:
        out["noise"] = [tensor_spec(sampler.noise(samples_per_class or sampler.default, seed))]
    if schedule is not None:
        out["schedule"] = {
            "network": schedule.network,
            "steps": schedule.steps,
            "epochs": schedule.epochs,
            "init": schedule.init,
        }
    ds = meta["dataset"]
    count, noise_values = sampler.counts(samples_per_class) if sampler is not None else (len(labels), 0)
    default = (
        None
        if sampler is None
        else [sampler.default]
        if meta["method"] == "d2m"
        else [sampler.per_class(sg, None) for sg in sampler.groups]
    )
    method_values, labeller_values = decoded_values(meta)
    out["budget"] = {
        "default_draw": default,
        "decoded_values": method_values,
        "labeller_values": labeller_values,
        "output_bytes": output_bytes(
            count, tuple(ds["image_shape"]), len(ds["classes"]), soft is not None, noise_values
        ),
    }
    return out


def made_vectors() -> list[dict]:
    """The vectors --make writes (seeded: the same every run)."""
    from d3codec.format.weights import quantise_state
    from d3codec.methods.d2m import ConditionalGenerator
    from d3codec.methods.d3 import D3Config, GroupPlan, group_entry, quantise_priors
    from d3codec.methods.d3.layout import stored_labels
    from d3codec.methods.pixel.formation import parse_formation
    from d3codec.nn.models import ConvNet, Decoder, build_model

    gen = torch.Generator().manual_seed(2026)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    vectors = []

    def add(
        file,
        description,
        sections,
        archive="read",
        reason=None,
        container="read",
        version="1.1",
        compress="auto",
        damage=None,
        draws=((None, 0),),
    ):
        v = {
            "file": file,
            "description": description,
            "version": version,
            "compress": compress,
            "container": container,
            "archive": archive,
            "sections": sections,
        }
        if reason:
            v["reason"] = reason
        if damage:
            v["damage"] = damage
        if archive == "read":
            v["draws"] = [list(d) for d in draws]
        vectors.append(v)
        return v

    # pixel: float16 images, I32 labels, soft labels (F32), three classes
    px_meta = {
        "format": "d3",
        "method": "pixel",
        "dataset": dataset(["a", "b", "c"], [1, 2, 3]),
        "params": {"objective": "dm"},
    }
    px = {
        "images": (torch.rand(3, 1, 2, 3, generator=gen) * 1.2 - 0.1).half(),
        "labels": torch.tensor([2, 0, 1], dtype=torch.int32),
    }
    soft = torch.softmax(rand(3, 3), 1)
    add(
        "pixel-i32-soft.d3",
        "a pixel archive: float16 images, I32 labels (allowed for any class count), float32 soft labels",
        [
            json_section(px_meta, "none"),
            tensors_section("images", px, codec="none"),
            tensors_section("soft_labels", {"soft_labels": soft}, codec="none"),
        ],
        compress="never",
    )

    # bptt with fixed init on 16×16 images: LeNet's θ₀ (F16), F32 step sizes, U8 images
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        lenet = build_model("lenet", 1, 2, 16)
    bp_meta = {
        "format": "d3",
        "method": "pixel",
        "dataset": dataset(["zero", "one"], [1, 16, 16]),
        "params": {
            "objective": "bptt",
            "network": "lenet",
            "init": "fixed",
            "inner_steps": 1,
            "inner_epochs": 2,
            "theta0_dtype": "float16",
        },
    }
    bp_images = {
        "images": torch.randint(0, 256, (2, 1, 16, 16), generator=gen, dtype=torch.uint8),
        "labels": torch.tensor([0, 1], dtype=torch.uint8),
        "range": torch.tensor([[0.0, 1.0], [-0.1, 1.1]]),
    }
    schedule = {
        "step_sizes": torch.tensor([0.02, 0.01]),
        **{f"theta0.{k}": v.detach().half() for k, v in lenet.named_parameters()},
    }
    add(
        "bptt-lenet16-fixed.d3",
        "a pixel archive of objective bptt, fixed init: 2 classes of one 16x16 uint8 image, "
        "LeNet's θ₀ as float16 under theta0.<name>, 1 step x 2 epochs",
        [json_section(bp_meta), tensors_section("images", bp_images), tensors_section("schedule", schedule)],
    )

    # d3, int8 storage, two groups ([0, 1) and [1, 3)), soft labels in both, images 1×8×8 (one upsampling)
    cfg = D3Config(decoder_dtype="int8", prior_dtype="int8", soft_labels=True)
    plans = [GroupPlan(0, 1, 3, 2, 4), GroupPlan(1, 3, 3, 2, 4)]
    priors, decoders, labels = {}, {}, {}
    for i, g in enumerate(plans):
        k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
        priors.update(quantise_priors(rand(k, p, z), -2 + 0.5 * rand(k, p, z), f"g{i}.", "int8"))
        dec = Decoder(z, (1, 8, 8), g.decoder_width)
        decoders.update(
            quantise_state({n: 0.5 * rand(*v.shape) for n, v in dec.state_dict().items()}, f"g{i}.", "int8")
        )
        labels[f"g{i}"] = torch.softmax(2 * rand(k, p, k), -1).half()
    d3_meta = {
        "format": "d3",
        "method": "d3",
        "dataset": dataset(["p", "q", "r"], [1, 8, 8]),
        "params": {"groups": [group_entry(g, cfg) for g in plans]},
    }
    add(
        "d3-int8-two-groups.d3",
        "a d3 archive: 3 classes in 2 groups, latent 3, 2 priors per class, width-4 int8 "
        "decoders (8x8 images: one upsampling), int8 priors, float16 soft labels per prior; expansions at the "
        "default count (seed 0) and at 3 per class (seed 7), so priors cycle",
        [
            json_section(d3_meta),
            tensors_section("priors", priors),
            tensors_section("decoder", decoders),
            tensors_section("prior_labels", labels),
        ],
        draws=((None, 0), (3, 7)),
    )

    # d3, float16 storage, RGB 9×9 (a crop from 10×10), no soft labels
    cfg16 = D3Config(decoder_dtype="float16", prior_dtype="float16", soft_labels=False)
    g = GroupPlan(0, 2, 4, 3, 8)
    dec = Decoder(4, (3, 9, 9), 8)
    d3f_meta = {
        "format": "d3",
        "method": "d3",
        "dataset": dataset(["u", "v"], [3, 9, 9]),
        "params": {"groups": [group_entry(g, cfg16)]},
    }
    add(
        "d3-float16-rgb.d3",
        "a d3 archive: 2 classes in one group, RGB 9x9 images (decoded at 10x10, cropped), "
        "latent 4, 3 priors per class, a width-8 float16 decoder, float16 priors, no soft labels",
        [
            json_section(d3f_meta),
            tensors_section("priors", quantise_priors(rand(2, 3, 4), -1 + 0.3 * rand(2, 3, 4), "g0.", "float16")),
            tensors_section(
                "decoder",
                quantise_state({n: 0.4 * rand(*v.shape) for n, v in dec.state_dict().items()}, "g0.", "float16"),
            ),
        ],
        draws=((None, 0), (2, 1)),
    )

    # d2m: upconv-v2, int8, 2 classes of 8×8; and the same with an int8 ConvNet-3 teacher of width 2
    generator = ConditionalGenerator(2, 3, 2, 4, (1, 8, 8))
    g_state = quantise_state({n: 0.5 * rand(*v.shape) for n, v in generator.state_dict().items()}, "", "int8")
    d2m_params = {
        "architecture": "upconv-v2",
        "noise_dim": 3,
        "embed_dim": 2,
        "generator_width": 4,
        "weight_dtype": "int8",
        "samples_per_class": 3,
    }
    d2m_meta = {"format": "d3", "method": "d2m", "dataset": dataset(["s", "t"], [1, 8, 8]), "params": d2m_params}
    add(
        "d2m-int8.d3",
        "a d2m archive: an upconv-v2 generator of width 4 (int8), noise 3, class embeddings 2, "
        "8x8 images, 3 samples per class by default; expansions at the default (seed 0) and at 5 per class (seed 5)",
        [json_section(d2m_meta), tensors_section("generator", g_state)],
        draws=((None, 0), (5, 5)),
    )
    teacher = ConvNet(1, 2, 8, width=2)
    t_state = quantise_state({n: 0.5 * rand(*v.shape) for n, v in teacher.state_dict().items()}, "", "int8")
    d2m_t_meta = {**d2m_meta, "params": {**d2m_params, "teacher_width": 2, "label_temperature": 2.0}}
    add(
        "d2m-int8-teacher.d3",
        "the d2m archive above with an ancillary int8 ConvNet-3 teacher of width 2 "
        "(label temperature 2): every sample gets the teacher's soft label",
        [
            json_section(d2m_t_meta),
            tensors_section("generator", g_state),
            tensors_section("teacher", t_state, critical=False),
        ],
        draws=((None, 0), (2, 9)),
    )

    with torch.random.fork_rng(devices=[]):  # the networks' initialisations leave the global RNG as it was
        # pixel formations: lowres ×3 (F32 codes 2×3 of 6×9 images), dct ×2 (U8 codes 4×4 of 9×9 images: ⌊9/2⌋)
        lr_meta = {
            "format": "d3",
            "method": "pixel",
            "dataset": dataset(["a", "b"], [1, 6, 9]),
            "params": {"objective": "dm", "formation": {"kind": "lowres", "factor": 3}},
        }
        lr_images = {
            "images": torch.rand(3, 1, 2, 3, generator=gen) * 1.4 - 0.2,
            "labels": torch.tensor([0, 1, 1], dtype=torch.uint8),
        }
        add(
            "pixel-lowres.d3",
            "a pixel archive of formation lowres, factor 3: float32 codes (3, 1, 2, 3) upsampled "
            "bilinearly to 6x9 images",
            [json_section(lr_meta), tensors_section("images", lr_images)],
        )
        labeller_net = ConvNet(1, 2, 9, width=2)
        labeller_state = quantise_state(
            {n: 0.5 * rand(*v.shape) for n, v in labeller_net.state_dict().items()}, "", "int8"
        )
        dct_meta = {
            "format": "d3",
            "method": "pixel",
            "dataset": dataset(["a", "b"], [1, 9, 9]),
            "params": {"objective": "dm", "formation": {"kind": "dct", "factor": 2}},
            "labeller": {"network": "convnet3", "width": 2, "temperature": 2.0, "dtype": "int8"},
        }
        dct_images = {
            "images": torch.randint(0, 256, (3, 1, 4, 4), generator=gen, dtype=torch.uint8),
            "labels": torch.tensor([0, 0, 1], dtype=torch.uint8),
            "range": torch.tensor([[-1.0, 1.0], [-0.5, 4.5]]),
        }
        dct_sections = [
            json_section(dct_meta),
            tensors_section("images", dct_images),
            tensors_section("labeller", labeller_state, critical=False),
        ]
        add(
            "pixel-dct-labeller.d3",
            "a pixel archive of formation dct, factor 2: uint8 codes (3, 1, 4, 4), the lowest "
            "4x4 DCT coefficients of 9x9 images; and a stored labeller (§5.8), an int8 ConvNet-3 of width 2 at "
            "temperature 2, whose soft labels of the decoded images the expansion lists",
            dct_sections,
        )

        # dct with a coefficient mask (FreD's variance selection): RGB 9x10 images (H ≠ W: the mask is row-major,
        # 90 bits: 6 bits of padding), factor 2: 4x5 codes per channel, the 20 coefficients of each channel that
        # vary most over stand-in "real" images (a different high frequency per channel), as the writer fits them
        masked_shape = (3, 9, 10)
        masked_gen = torch.Generator().manual_seed(2027)  # its own stream: the vectors above and below stay the same
        real = 0.5 + 0.1 * torch.rand(64, *masked_shape, generator=masked_gen)
        real[:, 0, :, ::2] += torch.rand(64, 1, 1, generator=masked_gen)  # columns: the highest horizontal frequency
        real[:, 1, ::2, :] += torch.rand(64, 1, 1, generator=masked_gen)  # rows: the highest vertical one
        real[:, 2, ::2, ::2] += torch.rand(64, 1, 1, generator=masked_gen)  # a sparse grid: both
        masked = parse_formation("dct-variance", 2).fitted(real)
        square = {r * masked_shape[2] + c for r in range(4) for c in range(5)}
        positions = masked.positions(masked_shape)
        assert all(set(row.tolist()) != square and bool((row == 0).any()) for row in positions)  # not the square; DC
        assert len({tuple(row.tolist()) for row in positions}) == 3  # a mask of its own for every channel
        mask_meta = {
            "format": "d3",
            "method": "pixel",
            "dataset": dataset(["a", "b"], list(masked_shape)),
            "params": {"objective": "dm", "formation": masked.meta(masked_shape)},
        }
        mask_images = {
            "images": masked.encode(real[:3] + 0.2 * torch.randn(3, *masked_shape, generator=masked_gen)),
            "labels": torch.tensor([0, 1, 1], dtype=torch.uint8),
        }
        add(
            "pixel-dct-mask.d3",
            "a pixel archive of formation dct, factor 2, with a coefficient mask (FreD's "
            "selection): RGB 9x10 images (90 bits a mask: 6 of padding), float32 codes (3, 3, 4, 5) placed, per "
            "channel, at the 20 set bits of that channel's mask (the DC and the coefficients of largest variance "
            "over stand-in real images, high frequencies among them) before the full inverse DCT",
            [json_section(mask_meta), tensors_section("images", mask_images)],
        )

        # d3: a tapered float16 decoder (16x16 images: widths 8, 4, 4) and top-1 soft labels of 3 classes
        cfg_top = D3Config(decoder_dtype="float16", prior_dtype="float16", soft_labels=True)
        top = GroupPlan(0, 3, 3, 2, 8, "tapered", 1)
        tdec = top.decoder((1, 16, 16))
        rows = torch.softmax(3 * rand(3, 2, 3), -1)
        top_tensors = {
            "priors": quantise_priors(rand(3, 2, 3), -1 + 0.3 * rand(3, 2, 3), "g0.", "float16"),
            "decoder": quantise_state(
                {n: 0.4 * rand(*v.shape) for n, v in tdec.state_dict().items()}, "g0.", "float16"
            ),
            "prior_labels": stored_labels(rows, "g0", 1),
        }
        top_meta = {
            "format": "d3",
            "method": "d3",
            "dataset": dataset(["x", "y", "z"], [1, 16, 16]),
            "params": {"groups": [group_entry(top, cfg_top)]},
        }
        add(
            "d3-tapered-topk.d3",
            "a d3 archive: 3 classes in one group, 16x16 images, latent 3, 2 priors per class, a "
            "tapered float16 decoder of width 8 (stages 8, 4, 4), soft labels stored as the largest of each row "
            "(top 1: values F16, indices I16), the rest spread evenly over the other 2 classes",
            [json_section(top_meta)] + [tensors_section(n, t) for n, t in top_tensors.items()],
        )

        # d2m: an upconv-v1 generator (no stem), float16, 8x8 images (widths 8, 4); a default of 1 000 a class,
        # which the cap of §4 lowers: the draws are explicit, the default draw is in the budget figures
        v1 = ConditionalGenerator(2, 2, 2, 8, (1, 8, 8), "upconv-v1")
        v1_params = {
            "architecture": "upconv-v1",
            "noise_dim": 2,
            "embed_dim": 2,
            "generator_width": 8,
            "weight_dtype": "float16",
            "samples_per_class": 1000,
        }
        v1_meta = {"format": "d3", "method": "d2m", "dataset": dataset(["s", "t"], [1, 8, 8]), "params": v1_params}
        add(
            "d2m-upconv-v1.d3",
            "a d2m archive: an upconv-v1 generator (no stem) of width 8 (stages 8, 4), float16, "
            "noise 2, class embeddings 2, 8x8 images; its declared default of 1 000 a class is capped by §4 (the "
            "budget figures give the default draw); expansions at 3 per class (seed 0) and 2 (seed 5)",
            [
                json_section(v1_meta),
                tensors_section(
                    "generator",
                    quantise_state({n: 0.5 * rand(*v.shape) for n, v in v1.state_dict().items()}, "", "float16"),
                ),
            ],
            draws=((3, 0), (2, 5)),
        )

    # ---- negative vectors: a reader MUST refuse each ----
    good_px = next(v for v in vectors if v["file"] == "pixel-i32-soft.d3")["sections"]
    bad = lambda f, r, s, **kw: add(f, r, s, archive=kw.pop("archive", "refuse"), reason=r, **kw)  # noqa: E731

    # the container
    many = [
        {"name": f"{i:03d}" + "x" * 61, "critical": False, "content": "bytes", "codec": "none", "hex": ""}
        for i in range(256)
    ]
    bad(
        "neg-table-too-long.d3",
        "the table length is 20 481, over the limit of 20 480 (§2, §4)",
        many,
        container="refuse",
        archive=None,
        compress="never",
        damage={"pad_table": 1},
    )
    bad(
        "neg-truncated.d3",
        "the file is one byte shorter than its table declares (§2)",
        good_px,
        container="refuse",
        compress="never",
        damage={"truncate": 1},
    )
    bad(
        "neg-zstd-frame-size.d3",
        "a zstd section's frame declares another size than the table's raw length (§3)",
        [json_section({"format": "d3", "pad": "z" * 200})],
        container="refuse",
        archive=None,
        damage={"raw_length": [0, 1]},
    )
    bad(
        "neg-unknown-critical-codec.d3",
        "a critical section of unknown codec 7 (§3)",
        [json_section({"format": "d3"}, "none")],
        container="refuse",
        archive=None,
        compress="never",
        damage={"codec": [0, 7]},
    )
    for name, text, why in (
        ("neg-json-nan.d3", '{"format":"d3","x":NaN}', "NaN is not JSON (§3)"),
        ("neg-json-overflow.d3", '{"format":"d3","x":1e400}', "1e400 overflows binary64 (§3)"),
        ("neg-json-duplicate-key.d3", '{"format":"d3","format":"d3"}', "a key appears twice (§3)"),
        ("neg-json-big-integer.d3", '{"format":"d3","x":9223372036854775808}', "an integer of 2^63 (§3)"),
    ):
        bad(
            name,
            why,
            [{"name": "meta", "critical": True, "content": "json", "codec": "none", "json_text": text}],
            container="refuse",
            archive=None,
            compress="never",
        )

    # the archive layer
    def px_with(meta=None, images=None, extra=None, meta_critical=True):
        m = json.loads(json.dumps(px_meta)) if meta is None else meta
        sections = [json_section(m, "none", meta_critical), tensors_section("images", images or px, codec="none")]
        return sections + (extra or [])

    bad(
        "neg-meta-ancillary.d3",
        "meta is flagged ancillary; it must be critical (§3, §5.1)",
        px_with(meta_critical=False),
        compress="never",
    )
    bad(
        "neg-labels-i64.d3",
        "labels of dtype I64: only U8 and I32 are allowed (§5.5)",
        px_with(images={**px, "labels": px["labels"].long()}),
        compress="never",
    )
    u8 = {"images": torch.zeros(3, 1, 2, 3, dtype=torch.uint8), "labels": torch.tensor([0, 1, 2], dtype=torch.uint8)}
    bad(
        "neg-range-f16.d3",
        "a range of dtype F16: it must be F32 (§5.5)",
        px_with(images={**u8, "range": torch.zeros(3, 2, dtype=torch.float16)}),
        compress="never",
    )
    bad(
        "neg-soft-labels-sum.d3",
        "soft labels whose rows sum to 0.6 (§5.2)",
        px_with(extra=[tensors_section("soft_labels", {"soft_labels": torch.full((3, 3), 0.2)}, codec="none")]),
        compress="never",
    )
    negative = torch.tensor([[1.5, -0.5, 0.0], [0.3, 0.3, 0.4], [0.3, 0.3, 0.4]])
    bad(
        "neg-soft-labels-negative.d3",
        "a soft label below 0 (§5.2)",
        px_with(extra=[tensors_section("soft_labels", {"soft_labels": negative}, codec="none")]),
        compress="never",
    )
    bad(
        "neg-extra-tensor.d3",
        "the images section holds a tensor it does not define (§5.1)",
        px_with(images={**px, "extra": torch.zeros(1)}),
        compress="never",
    )
    bad(
        "neg-unknown-critical-section.d3",
        "a critical section the pixel method does not define (§3)",
        px_with(extra=[{"name": "zz", "critical": True, "content": "bytes", "codec": "none", "hex": "00"}]),
        compress="never",
    )
    float_dim = {**d2m_meta, "params": {**d2m_params, "noise_dim": 3.0}}
    bad(
        "neg-integer-as-float.d3",
        "noise_dim written 3.0: an integer field must be a JSON integer (§5.1)",
        [json_section(float_dim), tensors_section("generator", g_state)],
    )
    bad(
        "neg-teacher-critical.d3",
        "the teacher section is flagged critical; §5.1 defines it ancillary",
        [json_section(d2m_t_meta), tensors_section("generator", g_state), tensors_section("teacher", t_state)],
    )
    tiny = {
        **d2m_meta,
        "dataset": dataset(["s", "t"], [1, 4, 4]),
        "params": {**d2m_params, "teacher_width": 2, "label_temperature": 1.0},
    }
    with torch.random.fork_rng(devices=[]):  # its initial weights are stored: seeded, so --make repeats itself
        torch.manual_seed(8)
        tiny_gen = ConditionalGenerator(2, 3, 2, 4, (1, 4, 4))
    bad(
        "neg-teacher-4px.d3",
        "a ConvNet-3 teacher for 4x4 images: it needs at least 8x8 (§5.3)",
        [
            json_section(tiny),
            tensors_section("generator", quantise_state(tiny_gen.state_dict(), "", "int8")),
            tensors_section(
                "teacher",
                {
                    "features.0.weight": torch.zeros(2, 1, 3, 3, dtype=torch.int8),
                    "features.0.weight.scale": torch.ones(2, dtype=torch.float16),
                },
                critical=False,
            ),
        ],
    )
    gap = json.loads(json.dumps(d3_meta))
    gap["params"]["groups"][1]["classes"] = [2, 3]
    bad(
        "neg-groups-gap.d3",
        "the groups skip class 1: they must follow one another from class 0 (§5.6)",
        [
            json_section(gap),
            tensors_section("priors", priors),
            tensors_section("decoder", decoders),
            tensors_section("prior_labels", labels),
        ],
    )
    no_labels = [json_section(d3_meta), tensors_section("priors", priors), tensors_section("decoder", decoders)]
    bad("neg-prior-labels-missing.d3", "groups with soft labels but no prior_labels section (§5.1, §5.6)", no_labels)
    wide = json.loads(json.dumps(d3_meta))
    wide["params"]["groups"] = [
        {**wide["params"]["groups"][0], "classes": [0, 3], "decoder_width": 6, "soft_labels": False}
    ]
    shapes6 = {
        "fc.weight": (6 * 16, 3),
        "fc.bias": (96,),
        "blocks.1.weight": (6, 6, 3, 3),
        "blocks.1.bias": (6,),
        "blocks.2.weight": (6,),
        "blocks.2.bias": (6,),
        "out.weight": (1, 6, 3, 3),
        "out.bias": (1,),
    }
    bad(
        "neg-decoder-width-6.d3",
        "a decoder of width 6: GroupNorm(4 groups) cannot split 6 channels (§5.3)",
        [
            json_section(wide),
            tensors_section("priors", quantise_priors(torch.zeros(3, 2, 3), torch.zeros(3, 2, 3), "g0.", "int8")),
            tensors_section("decoder", quantise_state({n: torch.zeros(s) for n, s in shapes6.items()}, "g0.", "int8")),
        ],
    )

    # the decoder width rule holds without GroupNorm too: 4x4 images (u = 0), width 6
    shapes6_4 = {"fc.weight": (6 * 16, 3), "fc.bias": (96,), "out.weight": (1, 6, 3, 3), "out.bias": (1,)}
    small = {**wide, "dataset": dataset(["p", "q", "r"], [1, 4, 4])}
    bad(
        "neg-decoder-width-6-4px.d3",
        "a uniform decoder of width 6 on 4x4 images (no upsampling, no GroupNorm): "
        "the width must be 1, 2, 3 or a multiple of 4 whatever the image size (§5.3)",
        [
            json_section(small),
            tensors_section("priors", quantise_priors(torch.zeros(3, 2, 3), torch.zeros(3, 2, 3), "g0.", "int8")),
            tensors_section(
                "decoder", quantise_state({n: torch.zeros(s) for n, s in shapes6_4.items()}, "g0.", "int8")
            ),
        ],
    )

    # §5.1: ranges
    big_budget = {**px_meta, "budget": {"bytes": 2**62 + 1, "ipc": None}}
    bad(
        "neg-budget-too-large.d3",
        "budget.bytes is 2^62 + 1: at most 2^62 (§5.1)",
        px_with(big_budget),
        compress="never",
    )
    tiny_std = {**px_meta, "dataset": {**px_meta["dataset"], "std": [1e-7]}}
    bad(
        "neg-dataset-std-tiny.d3",
        "dataset.std of 1e-7: std must be from 1e-6 to 1000 (§5.1)",
        px_with(tiny_std),
        compress="never",
    )
    big_mean = {**px_meta, "dataset": {**px_meta["dataset"], "mean": [1e39]}}
    bad(
        "neg-dataset-mean-large.d3",
        "dataset.mean of 1e39 (infinite in float32): mean must be from -1000 to 1000 (§5.1)",
        px_with(big_mean),
        compress="never",
    )

    # §5.5: bptt classes, formations
    empty_meta = {
        "format": "d3",
        "method": "pixel",
        "dataset": dataset(["a", "b", "c"], [1, 16, 16]),
        "params": {"objective": "bptt", "network": "lenet", "init": "random", "inner_steps": 1, "inner_epochs": 1},
    }
    empty_images = {
        "images": torch.zeros(2, 1, 16, 16, dtype=torch.float16),
        "labels": torch.tensor([0, 1], dtype=torch.uint8),
    }
    bad(
        "neg-bptt-empty-class.d3",
        "a bptt archive whose class 2 has no image: every class must hold a positive multiple of the steps (§5.5)",
        [
            json_section(empty_meta),
            tensors_section("images", empty_images),
            tensors_section("schedule", {"step_sizes": torch.tensor([0.01])}),
        ],
    )

    def formed(kind, factor, codes, shape=(1, 4, 4)):
        meta = {
            "format": "d3",
            "method": "pixel",
            "dataset": dataset(["a", "b"], list(shape)),
            "params": {"objective": "dm", "formation": {"kind": kind, "factor": factor}},
        }
        return [
            json_section(meta, "none"),
            tensors_section(
                "images",
                {"images": codes, "labels": torch.tensor([0, 1] * (len(codes) // 2), dtype=torch.uint8)},
                codec="none",
            ),
        ]

    codes2 = torch.full((2, 1, 2, 2), 0.5)
    bad(
        "neg-formation-kind.d3",
        "a formation of unknown kind 'wavelet' (§5.5)",
        formed("wavelet", 2, codes2),
        compress="never",
    )
    bad(
        "neg-formation-factor.d3",
        "a lowres formation of factor 17: 2 to 16 (§5.5)",
        formed("lowres", 17, codes2),
        compress="never",
    )
    bad(
        "neg-lowres-not-dividing.d3",
        "a lowres formation of factor 2 on 5x4 images: f must divide H and W (§5.5)",
        formed("lowres", 2, codes2, (1, 5, 4)),
        compress="never",
    )
    bad(
        "neg-dct-factor-empty.d3",
        "a dct formation of factor 8 on 4x4 images leaves 0x0 codes: ⌊H/f⌋ and ⌊W/f⌋ must be at least 1 (§5.5)",
        formed("dct", 8, torch.zeros(2, 1, 0, 0)),
        compress="never",
    )
    bad(
        "neg-formation-codes-shape.d3",
        "a lowres formation of factor 2 whose codes have the image shape (4x4), not (2x2) (§5.5)",
        formed("lowres", 2, torch.full((2, 1, 4, 4), 0.5)),
        compress="never",
    )
    bad(
        "neg-dct-overflow.d3",
        "a dct formation whose float32 codes of 3e38 decode to infinite images (§5.5)",
        formed("dct", 2, torch.full((2, 1, 2, 2), 3e38)),
        compress="never",
    )

    # §5.5: the dct mask, on 10x10 images (100 bits: 13 bytes, the last 4 bits padding), factor 2: 25 bits set
    def mask_of(bits, length=100):
        out = torch.zeros(8 * ((length + 7) // 8), dtype=torch.bool)
        out[list(bits)] = True
        return bytes(
            int("".join("1" if b else "0" for b in out[i : i + 8].tolist()), 2) for i in range(0, len(out), 8)
        ).hex()

    def masked_with(formation):  # 2 codes of 5x5 (10x10 images, factor 2) under the formation given
        sections = formed(formation["kind"], formation["factor"], torch.full((2, 1, 5, 5), 0.5), (1, 10, 10))
        sections[0]["json"]["params"]["formation"] = formation
        return sections

    good_mask = mask_of([0, 1, 2, 3, 4, 10, 11, 12, 13, 20, 21, 22, 30, 31, 40, 9, 19, 29, 90, 91, 92, 99, 55, 66, 77])
    assert len(good_mask) == 26 and good_mask.upper() != good_mask
    bad(
        "neg-dct-mask-lowres.d3",
        "a coefficient mask on a lowres formation: only dct takes a mask (§5.5)",
        masked_with({"kind": "lowres", "factor": 2, "mask": [good_mask]}),
        compress="never",
    )
    bad(
        "neg-dct-mask-bits.d3",
        "a dct mask with 24 bits set where factor 2 on 10x10 images keeps ⌊H/f⌋·⌊W/f⌋ = 25 (§5.5)",
        masked_with({"kind": "dct", "factor": 2, "mask": [mask_of(range(24))]}),
        compress="never",
    )
    bad(
        "neg-dct-mask-length.d3",
        "a dct mask of 28 hex digits for 10x10 images: 2·⌈H·W/8⌉ = 26 (§5.5)",
        masked_with({"kind": "dct", "factor": 2, "mask": [good_mask + "00"]}),
        compress="never",
    )
    bad(
        "neg-dct-mask-uppercase.d3",
        "a dct mask in uppercase hex: lowercase 0-9a-f only (§5.5)",
        masked_with({"kind": "dct", "factor": 2, "mask": [good_mask.upper()]}),
        compress="never",
    )
    bad(
        "neg-dct-mask-padding.d3",
        "a dct mask whose padding bit 100 (past H·W = 100) is set, with 25 bits set among the first 100 (§5.5)",
        masked_with({"kind": "dct", "factor": 2, "mask": [mask_of([*range(25), 100])]}),
        compress="never",
    )
    bad(
        "neg-dct-mask-channels.d3",
        "two dct masks for 1-channel images: one per channel (§5.5)",
        masked_with({"kind": "dct", "factor": 2, "mask": [good_mask, good_mask]}),
        compress="never",
    )

    # §5.2: stored weights must be finite
    inf_state = quantise_state({n: 0.4 * rand(*v.shape) for n, v in dec.state_dict().items()}, "g0.", "float16")
    inf_state["g0.out.bias"] = torch.full_like(inf_state["g0.out.bias"], float("inf"))
    bad(
        "neg-weight-inf.d3",
        "a float16 decoder whose output bias is +inf (the sigmoid would still give finite "
        "images): stored weights must be finite (§5.2)",
        [
            json_section(d3f_meta),
            tensors_section("priors", quantise_priors(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), "g0.", "float16")),
            tensors_section("decoder", inf_state),
        ],
    )

    # §5.6: top-k soft labels (the archive above, with the top 2 of each row)
    def top_with(change):
        meta = json.loads(json.dumps(top_meta))
        meta["params"]["groups"][0]["label_top_k"] = 2
        labels_ = stored_labels(rows, "g0", 2)
        change(labels_["g0.values"], labels_["g0.indices"])
        return [
            json_section(meta),
            tensors_section("priors", top_tensors["priors"]),
            tensors_section("decoder", top_tensors["decoder"]),
            tensors_section("prior_labels", labels_),
        ]

    bad(
        "neg-topk-index-range.d3",
        "a top-k index of 3 in a group of 3 classes: indices must be in [0, K_g) (§5.6)",
        top_with(lambda values, indices: indices[0, 0].fill_(3)),
    )
    bad(
        "neg-topk-index-repeated.d3",
        "a top-k row naming one class twice: indices must be distinct within a row (§5.6)",
        top_with(lambda values, indices: indices[1, 1].fill_(int(indices[1, 1, 0]))),
    )
    bad(
        "neg-topk-sum.d3",
        "top-k values summing to 1.25: at most 1 + 0.01 (§5.6)",
        top_with(lambda values, indices: values[2, 0].copy_(torch.tensor([0.75, 0.5]))),
    )

    # §5.8: the labeller
    no_meta = {k: v for k, v in dct_meta.items() if k != "labeller"}
    bad(
        "neg-labeller-no-meta.d3",
        "a labeller section without meta.labeller (§5.8)",
        [json_section(no_meta)] + dct_sections[1:],
    )
    bad("neg-labeller-no-section.d3", "meta.labeller without a labeller section (§5.8)", dct_sections[:2])
    inf_scale = dict(labeller_state)
    inf_scale["classifier.weight.scale"] = torch.full_like(inf_scale["classifier.weight.scale"], float("inf"))
    bad(
        "neg-labeller-scale-inf.d3",
        "a labeller whose int8 scale is +inf: stored weights and scales must be finite (§5.2, §5.8)",
        dct_sections[:2] + [tensors_section("labeller", inf_scale, critical=False)],
    )
    return vectors


def compact_json(doc: dict) -> str:
    """JSON with one key a line, but every list of numbers on one line (the files stay readable)."""
    import re

    text = json.dumps(doc, indent=1, ensure_ascii=False)
    return re.sub(
        r"\[\s*(-?[0-9][-0-9.e+, \n]*?)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )


def make() -> None:
    """Rewrite vectors.json: the hand-written vectors kept, the made ones regenerated, every positive
    archive vector's expansion recomputed with d3codec; then write the files."""
    torch.set_num_threads(1)  # one summation order for the expansions, however many cores the machine has
    doc = json.loads((HERE / "vectors.json").read_text())
    kept = [v for v in doc["vectors"] if v["file"] in KEPT]
    for v in kept:  # what a reader must do with the hand-written ones
        is_archive = any(s["name"] == "meta" and s.get("json", {}).get("method") for s in v["sections"])
        v.setdefault("version", "1.0")
        v.setdefault("container", "read")
        v.setdefault("archive", "read" if is_archive else None)
        if v["file"] == "bptt-schedule-zstd-bytes.d3":
            v["archive"] = "refuse"
            v["reason"] = "LeNet on 4x4 images: it needs at least 16x16 (§5.3); a valid container all the same"
        if v["archive"] == "read":
            v["draws"] = [[None, 0]]
        for section in v["sections"]:  # every F16 value as the binary16 it is stored as (§8)
            for t in section.get("tensors", {}).values():
                if t["dtype"] == "F16":
                    t["values"] = torch.tensor(t["values"], dtype=torch.float16).tolist()
    doc["vectors"] = kept + made_vectors()
    doc["zstd_library"] = zstd_library()
    for v in doc["vectors"]:
        v.pop("expect", None)
        if not v.get("damage"):  # the codec each section is expected to have is the one the writer chose
            with D3Reader(build(v)) as reader:
                for spec, info in zip(v["sections"], reader.sections):
                    spec["codec"] = {0: "none", 1: "zstd"}[info.codec]
        if v["archive"] == "read":
            data = build(v)
            v["expect"] = [expansion(data, n, seed) for n, seed in v["draws"]]
    (HERE / "vectors.json").write_text(compact_json(doc) + "\n")
    sys.exit(main(check=False))


if __name__ == "__main__":
    if "--make" in sys.argv:
        make()
    sys.exit(main("--check" in sys.argv))
