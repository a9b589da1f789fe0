"""Fuzzing .d3 archives and the other files d3codec reads: mutate valid ones and read them as a user would.

The oracle: reading a mutated archive as a user would (``D3Dataset`` at the archive's default draw or
at a drawn sample count, asking its stored labeller for soft labels, ``d3 verify``, the ``--grid``
picture, ``d3 merge`` with another part), under the stated decode limits FUZZ_LIMITS, either succeeds or
raises ``D3FormatError`` (merge, checkpoints, users' files and folders: any ``D3Error``; verify: a failed
check, never an exception). Any other exception, a case running past CASE_SECONDS, or one whose peak
resident memory grows by more than CASE_MEMORY_BYTES *while decoding* (measured by resetting the
kernel's high-water mark, /proc/self/clear_refs, before each case) is a finding. Six families of
mutations, with their shares of the cases (SHARES):

- byte-level (27 %: bit flips, byte changes, truncation, splices, lying table lengths, huge declared
  sizes, extra bytes): the checksums must catch them, so a read that succeeds must give exactly
  the original data;
- structural (38 %), with every checksum recomputed, so that the parsers and the methods' decoders see
  them: metadata fields deleted or replaced by other JSON values (wrong types, huge or negative
  numbers, deep or long values), tensors re-typed, reshaped, dropped, added or filled with
  non-finite or huge values, sections dropped, duplicated, reordered, flipped critical, unknown
  critical or ancillary sections added, deep or huge JSON, damaged safetensors headers;
- method-layer (20 %), consistent: archives of every method written afresh (tests/hostile.py) with their
  declared shapes, widths, class counts, priors, sample sizes and architecture configs drawn from
  hostile ranges (4096-pixel sides, a million priors, ten million samples, widths that a GroupNorm
  cannot split, images too small for a network), tensors of exactly those shapes, and the budgets
  of merge parts replaced by other JSON values: only the decode budget and the value rules stand
  between such an archive and the machine. Among them: d3 soft labels stored as their top k (k from
  1 to K − 1, and 0, K, K + 1; up to 2 000 classes × 800 priors, whose dense table would take
  12.8 GB; values that are no probabilities, classes out of range or repeated); pixel archives of
  formation codes (kinds, factors 0 to 20 and other JSON values, codes of the declared shape or
  another, U8, F16 or F32, huge or non-finite values such as 3e38, 4096-pixel images at factor 16);
  and archives of every method with a stored labeller (hostile widths, temperatures, dtypes and
  networks, NaN or infinite scales, a ``meta.labeller`` without its section, a section without it);
- checkpoint (5 %): a valid encoder checkpoint (d3codec.encode.checkpoint: Adam over two parameter groups and
  SGD with momentum, a module, random states) with its header metadata (iteration, opt_groups: values,
  types, keys, lengths; format, kind, run), its tensors (shapes, dtypes, NaN, missing, extra) or its
  safetensors header damaged, then resumed and trained one step, as an encoder goes on;
- user file (5 %): the safetensors files a user passes in, ``--teacher`` / ``--labeller`` (a ConvNet-3,
  d3codec.nn.teacher.load_teacher) and ``--generator`` (a d2m generator, load_generator), with hostile
  tensors (huge, zero or 0-d widths, NaN, other dtypes, missing or extra) or header metadata
  (``classes``, ``architecture``, ``kind``), loaded and run on one input;
- folder (5 %): a small class-per-folder tree of tiny PNG, JPEG, BMP and TIFF images written afresh for
  each case, with hostile things added (links to ``.``, ``..`` or ``/``, class folders that are links,
  FIFOs, empty, truncated or lying files, 20 000² and 1 × 2 000 000 PNGs of a few KB, images at the
  pixel limit, zTXt bombs, dangling links and links out of the tree, odd names, deep folders), loaded
  by ``load_dataset`` (with 0 or 2 load workers) and every image read.

The memory part of the oracle sees this process only: folder images read by load workers (64 reads or
more with workers) are decoded in child processes it does not measure.

Run as a script for a long run (it prints the cases tried and the findings, and writes each finding's
file, finding-SEED-CASE.d3, .safetensors or .json (a folder's recipe), beside the seed archives):

    python tests/fuzz_archives.py --cases 100000 --seed 1
    python tests/fuzz_archives.py --cases 100000 --seed 1 --case 4711   # read that case alone again

tests/test_fuzz.py runs a CI-sized share of the same cases.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import struct
import sys
import time
import traceback
import warnings
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from d3codec import D3Dataset, DecodeLimits  # noqa: E402
from d3codec.errors import D3Error, D3FormatError  # noqa: E402
from d3codec.format.container import FIXED_HEADER, Content, D3Reader, Section, encode_archive  # noqa: E402

CASE_SECONDS = 5.0
CASE_MEMORY_BYTES = 768 << 20  # peak resident memory a case may add while it reads and decodes
# the decode budget the oracle reads under (a user's smaller machine): a case that decodes within these
# must stay within CASE_SECONDS and CASE_MEMORY_BYTES, and one over them must be refused before allocating
FUZZ_LIMITS = DecodeLimits(
    max_bytes=32 << 20,
    max_parameters=1 << 24,
    max_macs_per_image=1 << 28,
    max_macs=1 << 31,
    max_canvas_pixels=1 << 24,
    max_section_bytes=64 << 20,
    working_bytes=64 << 20,
)


# -- seeds: one small valid archive of each kind ------------------------------------------------


def seed_archives(folder: Path) -> dict[str, bytes]:
    """Valid archives of every method and storage kind, built once into ``folder`` (cached)."""
    from conftest import make_tiny_real

    from d3codec.encode.labelled import LabelledEncoder, LabellerConfig
    from d3codec.encode.pipeline import compress
    from d3codec.methods.d2m import D2MEncoder
    from d3codec.methods.d3 import D3Encoder
    from d3codec.methods.pixel import BPTTEncoder, DMEncoder

    folder.mkdir(parents=True, exist_ok=True)
    tiny = dict(teacher_epochs=1.0, teacher_width=8, embed_width=8, real_per_class=4)
    tiny_d2m = dict(
        pretrain_iterations=2,
        pretrain_batch=8,
        disc_width=4,
        iterations=1,
        synthetic_per_class=4,
        noise_dim=4,
        embed_dim=4,
        **tiny,
    )
    builders = {
        "dm-uint8": (lambda: DMEncoder.from_options("fast", iterations=1, real_per_class=4, embed_width=8), 6_000),
        "dm-float16": (
            lambda: DMEncoder.from_options(
                "fast", iterations=1, real_per_class=4, embed_width=8, storage_dtype="float16"
            ),
            6_000,
        ),
        "bptt-fixed": (
            lambda: BPTTEncoder.from_options(
                "fast", iterations=1, real_per_class=4, images_per_class=2, inner_epochs=1
            ),
            60_000,
        ),
        "bptt-random": (
            lambda: BPTTEncoder.from_options(
                "fast", iterations=1, real_per_class=4, images_per_class=2, init="random", inner_epochs=1
            ),
            6_000,
        ),
        "d3-int8": (
            lambda: D3Encoder.from_options(
                "fast", iterations=1, init_iterations=2, synthetic_per_class=4, prior_dtype="int8", **tiny
            ),
            20_000,
        ),
        "d3-float16": (
            lambda: D3Encoder.from_options(
                "fast", iterations=1, init_iterations=2, synthetic_per_class=4, decoder_dtype="float16", **tiny
            ),
            20_000,
        ),
        "d2m": (lambda: D2MEncoder.from_options("fast", None, None, str(folder / "d2m.ckpt"), **tiny_d2m), 20_000),
        "d2m-soft-labels": (
            lambda: D2MEncoder.from_options(
                "fast", None, None, str(folder / "d2m-soft.ckpt"), soft_labels=True, **tiny_d2m
            ),
            30_000,
        ),
        # formations: DCT (FreD) and low-resolution (IDC) codes of half the side instead of pixels
        "dm-dct": (
            lambda: DMEncoder.from_options(
                "fast", iterations=1, real_per_class=4, embed_width=8, formation="dct", formation_factor=2
            ),
            6_000,
        ),
        "dm-lowres": (
            lambda: DMEncoder.from_options(
                "fast", iterations=1, real_per_class=4, embed_width=8, formation="lowres", formation_factor=2
            ),
            6_000,
        ),
        # a stored labeller (an ancillary section and meta.labeller) beside DM's images
        "dm-labeller": (
            lambda: LabelledEncoder(
                DMEncoder.from_options("fast", iterations=1, real_per_class=4, embed_width=8),
                LabellerConfig(width=4, epochs=0.5),
            ),
            8_000,
        ),
        # top-k soft labels (prior_labels holds g0.values F16 and g0.indices I16)
        "d3-top-k": (
            lambda: D3Encoder.from_options(
                "fast", iterations=1, init_iterations=2, synthetic_per_class=4, label_top_k=1, **tiny
            ),
            20_000,
        ),
    }
    real, seeds = None, {}
    for name, (encoder, budget) in builders.items():
        path = folder / f"{name}.d3"
        if not path.exists():
            real = real or make_tiny_real()
            compress(real, path, encoder=encoder(), budget=budget, progress=False)
        seeds[name] = path.read_bytes()
    return seeds


# -- mutations ------------------------------------------------------------------------------------


def sections_of(data: bytes) -> list[Section]:
    with D3Reader(data) as r:
        return [Section(s.name, r.read_bytes(s.name), Content(s.content), s.critical) for s in r.sections]


def random_json_value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(12)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1, 2, 3, 2**31, 2**63, -(2**63), 10**30])
    if choice == 3:
        return rng.choice([0.0, -1.5, 1e308, -1e308, 1e-320, 0.5])
    if choice == 4:
        return rng.choice(
            [
                "",
                "x",
                "lenet",
                "fixed",
                "random",
                "int8",
                "float16",
                "uint8",
                "upconv-v2",
                "pixel",
                "d3",
                "d2m",
                "bptt",
                "\u0000",
                "a" * 10_000,
            ]
        )
    if choice == 5:
        return [random_json_value(rng, depth + 1) for _ in range(rng.randrange(4))] if depth < 4 else []
    if choice == 6:
        return (
            {str(rng.randrange(5)): random_json_value(rng, depth + 1) for _ in range(rng.randrange(3))}
            if depth < 4
            else {}
        )
    if choice == 7:
        return [[0, 10], [10, 20]]
    if choice == 8:
        return [1, 16, 16]
    if choice == 9:
        return list(range(rng.randrange(1, 6)))
    if choice == 10:
        return rng.randrange(-3, 100_000)
    return ["a", "b", "c"]


def json_paths(obj, prefix=()):
    """Every (path, value) inside a JSON object, depth first."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from json_paths(v, prefix + (i,))


def mutate_json(meta: dict, rng: random.Random) -> dict:
    meta = json.loads(json.dumps(meta))
    paths = [p for p, _ in json_paths(meta) if p]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        path = rng.choice(paths)
        parent = meta
        try:
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict) != isinstance(path[-1], str):
                continue  # an earlier change in this call replaced a list by an object, or the other way
            if rng.random() < 0.25 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = random_json_value(rng)
        except (KeyError, IndexError, TypeError):
            pass
    return meta


def mutate_tensors(tensors: dict[str, torch.Tensor], rng: random.Random) -> dict[str, torch.Tensor]:
    tensors = dict(tensors)
    if not tensors:
        return {"x": torch.zeros(1)}
    key = rng.choice(sorted(tensors))
    value = tensors[key]
    choice = rng.randrange(9)
    if choice == 0:
        tensors.pop(key)
    elif choice == 1:
        tensors[key] = value.to(
            rng.choice(
                [
                    torch.uint8,
                    torch.int8,
                    torch.int32,
                    torch.int64,
                    torch.float16,
                    torch.float32,
                    torch.float64,
                    torch.bool,
                ]
            )
        )
    elif choice == 2:
        tensors[key] = value.flatten()[: max(0, value.numel() - rng.randrange(1, 3))].clone()
    elif choice == 3:
        tensors[key] = torch.zeros(
            tuple(rng.choice([0, 1, 2, 3, 7]) for _ in range(rng.randrange(0, 5))), dtype=value.dtype
        )  # no dimension: a 0-d tensor
    elif choice == 4 and value.is_floating_point() and value.numel():
        v = value.clone().flatten()
        v[rng.randrange(v.numel())] = rng.choice([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0])
        tensors[key] = v.view(value.shape)
    elif choice == 5 and value.numel():
        v = value.clone().flatten()
        info = torch.iinfo(v.dtype) if not v.is_floating_point() and v.dtype != torch.bool else None
        v[rng.randrange(v.numel())] = rng.choice([info.max, info.min, 0]) if info else 0
        tensors[key] = v.view(value.shape)
    elif choice == 6:
        tensors[f"{key}.extra" if rng.random() < 0.5 else rng.choice(["scale", "range", "labels", "images"])] = (
            torch.zeros(rng.randrange(0, 4))
        )
    elif choice == 7:
        other = rng.choice(sorted(tensors))
        tensors[key], tensors[other] = tensors[other], tensors[key]
    else:
        tensors[key] = value.reshape(-1) if value.dim() != 1 else value.reshape(1, -1)
    return tensors


def safetensors_with_lying_header(rng: random.Random) -> bytes:
    shape = rng.choice([[2**40], [2**20, 2**20], [-1], [3], [10**18, 10**18]])
    header = json.dumps(
        {
            "x": {
                "dtype": rng.choice(["F32", "U8", "Q9"]),
                "shape": shape,
                "data_offsets": [0, rng.choice([0, 4, 12, 2**40])],
            }
        }
    ).encode()
    return struct.pack("<Q", len(header)) + header + bytes(rng.randrange(0, 16))


def structural(data: bytes, rng: random.Random) -> bytes:
    sections = sections_of(data)
    choice = rng.randrange(12)
    if choice <= 3:  # metadata fields
        meta = json.loads(sections[0].payload)
        sections[0] = Section.json("meta", mutate_json(meta, rng))
    elif choice <= 6:  # one tensor section
        idx = [i for i, s in enumerate(sections) if s.content == Content.SAFETENSORS]
        if idx:
            i = rng.choice(idx)
            with D3Reader(encode_archive([sections[i]])) as r:
                tensors = r.read_tensors(sections[i].name)
            try:
                sections[i] = Section.tensors(sections[i].name, mutate_tensors(tensors, rng), sections[i].critical)
            except Exception:  # noqa: BLE001 - safetensors cannot write this mutation: skip it
                pass
    elif choice == 7:  # drop, duplicate-by-rename, reorder, flip critical
        i = rng.randrange(len(sections))
        op = rng.randrange(4)
        if op == 0 and len(sections) > 1:
            sections.pop(i)
        elif op == 1:
            rng.shuffle(sections)
        elif op == 2:
            s = sections[i]
            sections[i] = Section(s.name, s.payload, s.content, not s.critical)
        else:
            s = sections[i]
            sections.append(Section(s.name + "x", s.payload, s.content, s.critical))
    elif choice == 8:  # unknown sections
        sections.insert(
            rng.randrange(len(sections) + 1),
            Section.raw(rng.choice(["zz", "future", "images2"]), bytes(rng.randrange(64)), critical=rng.random() < 0.5),
        )
    elif choice == 9:  # deep or huge JSON in meta
        sections[0] = Section(
            "meta",
            rng.choice(
                [
                    b"[" * 200_000 + b"]" * 200_000,
                    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                    b'{"format": "d3", "x": "' + b"a" * 3_000_000 + b'"}',
                    b"\xff\xfe",
                    b"NaN",
                    b'{"format": NaN}',
                ]
            ),
            Content.JSON,
        )
    elif choice == 10:  # a damaged safetensors header
        idx = [i for i, s in enumerate(sections) if s.content == Content.SAFETENSORS]
        if idx:
            i = rng.choice(idx)
            sections[i] = Section(
                sections[i].name, safetensors_with_lying_header(rng), Content.SAFETENSORS, sections[i].critical
            )
    else:  # raw bytes of a section changed, checksum recomputed
        i = rng.randrange(len(sections))
        payload = bytearray(sections[i].payload)
        if payload:
            for _ in range(rng.randrange(1, 4)):
                payload[rng.randrange(len(payload))] = rng.randrange(256)
        sections[i] = Section(sections[i].name, bytes(payload), sections[i].content, sections[i].critical)
    try:
        return encode_archive(sections, rng.choice(["auto", "never", "always"]))
    except ValueError:  # the writer refuses (e.g. duplicate names): write the table by hand instead
        return data


def byte_level(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    choice = rng.randrange(7)
    if choice == 0:
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    elif choice == 1:
        out[rng.randrange(len(out))] = rng.randrange(256)
    elif choice == 2:
        out = out[: rng.randrange(len(out))]
    elif choice == 3:
        i = rng.randrange(len(out) + 1)
        out[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 17)))
    elif choice == 4:
        out += bytes(rng.randrange(1, 9))
    else:  # a lying length in the table, with the header checksum recomputed (so the lie gets read)
        count, table_length = struct.unpack_from("<HI", out, 10)
        pos = FIXED_HEADER.size
        entries = []
        for _ in range(count):
            n = out[pos]
            entries.append(pos + 1 + n + 3)  # stored length, then raw length, then crc
            pos += 1 + n + 15
        at = rng.choice(entries) + rng.choice([0, 4])
        value = rng.choice([0, 1, 2**31, 2**32 - 1, struct.unpack_from("<I", out, at)[0] + rng.choice([-1, 1])])
        struct.pack_into("<I", out, at, value % 2**32)
        head_end = FIXED_HEADER.size + table_length
        struct.pack_into("<I", out, head_end, zlib.crc32(bytes(out[:head_end])))
        return bytes(out)
    return bytes(out)


# -- method-layer mutations: consistent archives of hostile shapes ------------------------------------

SIDES = (1, 2, 3, 4, 5, 7, 8, 9, 16, 28, 64, 256, 1024, 4096)
BUILD_VALUES = 2_000_000  # the most values a mutation writes (the archive may declare far more)


def _shape(rng: random.Random) -> tuple[int, int, int]:
    side = rng.choice(SIDES)
    return (rng.choice([1, 3]), side, side if rng.random() < 0.8 else rng.choice(SIDES))


def method_layer(rng: random.Random) -> tuple[bytes, dict]:
    """A consistent archive of one method with hostile declared sizes, and how to read it.

    Returns (archive bytes, read options: ``samples_per_class``, ``operation``, and for merge the other part)."""
    import hostile

    from d3codec.format.limits import network_cost
    from d3codec.methods.d2m import ConditionalGenerator
    from d3codec.nn.models import Decoder

    method = rng.choice(["d3", "d3", "d2m", "d2m", "pixel", "merge", "formation", "labeller"])
    spc = rng.choice([None, None, 1, 2, 7, 1000, 10**5, 10**7])
    opts = {"samples_per_class": spc, "operation": rng.choice(["dataset", "dataset", "verify", "grid"])}
    if method == "formation":
        opts["samples_per_class"] = None
        return _formation_case(rng), opts
    if method == "labeller":
        return _labeller_case(rng), opts
    if method in ("d3", "merge"):
        shape = _shape(rng)
        k = rng.choice([1, 2, 3, 10, 1000])
        z, p = rng.choice([1, 3, 64, 4096]), rng.choice([1, 2, 5, 1000, 10**6])
        w = rng.choice([1, 2, 3, 4, 6, 8, 64, 256, 4096])
        groups, soft = rng.randint(1, min(k, 3)), rng.random() < 0.5
        top = _top_k_draw(rng, k, soft)
        bound = BUILD_VALUES
        if top is not None and rng.random() < 0.25:  # many classes and priors, their soft labels stored sparsely:
            k, p = rng.choice([(2000, 800), (1000, 400), (1000, 100), (500, 200)])  # dense, 12.8 GB down to 0.4 GB
            z, shape, top, bound = 1, (1, 8, 8), rng.choice([1, 2, 5]), BUILD_TOP_K_VALUES
            groups = rng.randint(1, 3)
        labels = 2 * top if top is not None else k if soft else 0  # label values a prior stores
        if k * p * (2 * z + labels) > bound:
            p = max(1, bound // (k * (2 * z + labels)))
        if k * p * (2 * z + labels) > bound:
            z = 3

        def decoder_values(width: int) -> int:
            try:
                return network_cost(lambda: Decoder(z, shape, width), lambda: (torch.zeros(1, z),), "d").parameters
            except D3FormatError:  # a width GroupNorm cannot split: written with width 8 below
                return 0

        if max(decoder_values(w), decoder_values(8)) * groups > BUILD_VALUES:
            w = 8
        if decoder_values(8) * groups > BUILD_VALUES:  # a wide first map (a long, thin image): shrink the latent
            z = 1
        if decoder_values(8) * groups > BUILD_VALUES:
            shape = (shape[0], 16, 16)
        try:
            data = hostile.d3_archive(
                classes=k,
                image_shape=shape,
                latent_dim=z,
                priors_per_class=p,
                decoder_width=w,
                groups=groups,
                soft_labels=soft,
                dtype=rng.choice(["int8", "float16"]),
                label_top_k=top,
            )
        except (ValueError, RuntimeError):  # a width GroupNorm cannot split: declare it, store width 8's tensors
            data = _redeclare(
                hostile.d3_archive(
                    classes=k,
                    image_shape=shape,
                    latent_dim=z,
                    priors_per_class=p,
                    decoder_width=8,
                    groups=groups,
                    label_top_k=top,
                ),
                "decoder_width",
                w,
            )
        if top is not None and rng.random() < 0.3:  # top-k values that are no probabilities, classes out of range
            data = hostile.with_tensors(data, "prior_labels", lambda t: _hostile_top_k(t, rng))
        if method == "merge":
            other = hostile.d3_archive(
                classes=2,
                image_shape=shape,
                latent_dim=z,
                priors_per_class=1,
                decoder_width=8,
                ds={**hostile.dataset(2, shape), "classes": ["other-a", "other-b"]},
            )
            data = _merge_budget(data, rng)
            opts = {"operation": "merge", "other": other}
        return data, opts
    if method == "d2m":
        shape = _shape(rng)
        k = rng.choice([1, 2, 10, 1000])
        z, e = rng.choice([1, 3, 64, 4096]), rng.choice([1, 2, 64])
        w = rng.choice([4, 6, 8, 64, 512, 4096])
        try:
            values = network_cost(
                lambda: ConditionalGenerator(k, z, e, w, shape),
                lambda: (torch.zeros(1, z), torch.zeros(1, dtype=torch.long)),
                "g",
            ).parameters
        except D3FormatError:
            values = BUILD_VALUES + 1
        if values > BUILD_VALUES:
            w, z, e = 4, min(z, 64), min(e, 64)
        teacher = rng.choice([None, None, 1, 2, 8, 64])
        data = hostile.d2m_archive(
            classes=k,
            image_shape=shape,
            noise_dim=z,
            embed_dim=e,
            width=w,
            samples_per_class=rng.choice([1, 3, 10**4, 10**6, 10**7]),
            teacher_width=teacher,
            dtype=rng.choice(["int8", "float16"]),
        )
        return data, opts
    shape = _shape(rng)
    k = rng.choice([1, 2, 10, 100, 1000])
    per_class = rng.choice([0, 1, 2])
    while k * per_class * shape[0] * shape[1] * shape[2] > 20 * BUILD_VALUES and per_class:
        per_class -= 1
    if per_class == 0 and k * shape[1] * shape[2] > 20 * BUILD_VALUES:
        k = 10
    data = hostile.pixel_archive(classes=k, image_shape=shape, per_class=per_class)
    opts["samples_per_class"] = None
    return data, opts


def _redeclare(data: bytes, field: str, value) -> bytes:
    meta_text = _meta_text(data)
    meta = json.loads(meta_text)
    for g in meta["params"]["groups"]:
        g[field] = value
    return _with_meta(data, json.dumps(meta))


def _merge_budget(data: bytes, rng: random.Random) -> bytes:
    meta = json.loads(_meta_text(data))
    value = random_json_value(rng)
    if rng.random() < 0.5:
        meta["budget"] = {"bytes": value}
        return _with_meta(data, json.dumps(meta))
    meta["federated"] = {"budget": value}
    text = json.dumps(meta)
    if rng.random() < 0.3:  # a number JSON writers never emit
        text = text.replace('"federated": {"budget": ' + json.dumps(value), '"federated": {"budget": 1e400', 1)
    return _with_meta(data, text)


def _meta_text(data: bytes) -> str:
    with D3Reader(data) as r:
        return r.read_bytes("meta").decode()


def _with_meta(data: bytes, text: str) -> bytes:
    sections = sections_of(data)
    sections[0] = Section("meta", text.encode(), Content.JSON)
    return encode_archive(sections)


# -- method-layer: formations, labellers, top-k soft labels ------------------------------------------------------------

BUILD_CODE_VALUES = 200_000  # the most formation code values a mutation writes (random values compress slowly)
BUILD_TOP_K_VALUES = 8_000_000  # the most values a sparse-label mutation writes (its dense table: gigabytes)
NAN = "__NaN__"  # a JSON value written as the bare number NaN, Infinity or 1e400 (Python's json writes none of them)
BARE_NUMBERS = {NAN: "NaN", "__Infinity__": "Infinity", "__1e400__": "1e400"}


def _bare_numbers(data: bytes) -> bytes:
    """``data`` with every BARE_NUMBERS placeholder in its meta replaced by the bare number it stands for."""
    text = _meta_text(data)
    if not any(f'"{k}"' in text for k in BARE_NUMBERS):
        return data
    for key, number in BARE_NUMBERS.items():
        text = text.replace(f'"{key}"', number)
    return _with_meta(data, text)


def _top_k_draw(rng: random.Random, k: int, soft: bool) -> int | None:
    """A d3 group's ``label_top_k``: None (whole rows) half the time, else mostly 1 to K − 1 and sometimes
    a value the reader must refuse (0, K, K + 1)."""
    if not soft or k < 2 or rng.random() < 0.5:
        return None
    return rng.choice([1, 1, 2, 3, max(1, k // 2), k - 1, k - 1, k, k + 1, 0])


def _hostile_top_k(tensors: dict[str, torch.Tensor], rng: random.Random) -> None:
    """Edit one top-k tensor of ``prior_labels`` in place: values that are not probabilities, classes out of
    range or repeated, other dtypes."""
    keys = sorted(k for k in tensors if k.endswith((".values", ".indices")))
    if not keys:
        return
    key = rng.choice(keys)
    value = tensors[key].clone()
    flat = value.view(-1)
    r = rng.randrange(4)
    if r == 0 and flat.numel():
        if key.endswith(".values"):
            flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf"), -1.0, 2.0, 65504.0, 1.0])
        else:
            flat[rng.randrange(flat.numel())] = rng.choice([-1, 32767, -32768, value.shape[-1], 1000])
    elif r == 1 and flat.numel():  # every stored probability the same (rows summing past 1), or every class the same
        flat.fill_(rng.choice([0.9, 1.0, 0.0]) if key.endswith(".values") else 0)
    elif r == 2:
        value = value.to(rng.choice([torch.float32, torch.int32, torch.int64, torch.uint8, torch.bfloat16]))
    else:
        value = value[..., : max(0, value.shape[-1] - 1)].contiguous() if value.dim() else value
    tensors[key] = value


def _formation_case(rng: random.Random) -> bytes:
    """A pixel archive of formation codes: hostile kinds and factors (0 to 20, and other JSON values), codes
    of the declared shape or another, U8, F16 or F32, with huge or non-finite values; 4096-pixel images at
    factor 16."""
    import hostile

    shape = _shape(rng)
    if rng.random() < 0.5:  # a formation a reader knows, of a factor that fits the images
        fits = [f for f in (2, 3, 4, 8, 16) if shape[1] % f == 0 and shape[2] % f == 0] or [2]
        kind, factor = rng.choice(["lowres", "dct"]), rng.choice(fits)
    else:
        kind = rng.choice(["lowres", "dct", "dct", "lowres", "pixels", "fred", "", 7, None])
        factor = rng.choice(list(range(0, 21)) + [1.5, "2", -1, 2**63, True, None])
    if rng.random() < 0.15:  # 4096-pixel sides at the largest factor: small codes, huge images
        shape, factor, kind = (rng.choice([1, 3]), 4096, 4096), 16, rng.choice(["dct", "lowres"])
    formation = {"kind": kind, "factor": factor}
    r = rng.random()
    if r < 0.05:
        formation = rng.choice([[kind, factor], "dct", 16, {}, None])
    elif r < 0.1:
        formation["extra"] = 1
    elif r < 0.15:
        formation.pop(rng.choice(["kind", "factor"]))
    f = factor if type(factor) is int and 1 <= factor <= 64 else 2
    c, h, w = shape
    code = [c, h // f, w // f]
    r = rng.random()
    if r < 0.1:  # the images' own shape
        code = [c, h, w]
    elif r < 0.2:
        i = rng.randrange(3)
        code[i] = max(0, code[i] + rng.choice([-1, 1]))
    elif r < 0.25:
        code = [c, w // f, h // f]
    if math.prod(code) > BUILD_CODE_VALUES:
        code = [c, min(code[1], 256), min(code[2], 256)]
    classes = rng.choice([1, 2, 10, 100])
    n = classes * rng.choice([1, 1, 2, 5])
    while n > 1 and n * math.prod(code) > BUILD_CODE_VALUES:
        n //= 2
    dtype = rng.choice([torch.uint8, torch.float16, torch.float32, torch.float32])
    gen = torch.Generator().manual_seed(rng.getrandbits(32))
    v = rng.random()
    if v < 0.3:
        codes = torch.rand(n, *code, generator=gen) * (255 if dtype == torch.uint8 else 1)
    else:
        codes = torch.zeros(n, *code)
    if v >= 0.6 and dtype != torch.uint8 and codes.numel():
        value = rng.choice([3e38, -3e38, 1e30, 65504.0, float("inf"), -float("inf"), float("nan"), 1e-45])
        if rng.random() < 0.5:
            codes.fill_(value)
        else:
            codes.view(-1)[rng.randrange(codes.numel())] = value
    return hostile.pixel_codes_archive(codes.to(dtype), formation, classes, shape)


def _labeller_case(rng: random.Random) -> bytes:
    """An archive of any method with a stored labeller whose description or tensors are hostile: widths,
    temperatures (NaN, infinite, out of range), dtypes and networks of other values, a field without its
    section and a section without its field, NaN or infinite scales and weights."""
    import hostile

    base = rng.choice(["pixel", "pixel", "d3", "d2m"])
    side = rng.choice([4, 8, 8, 16, 16, 28, 32])
    shape = (rng.choice([1, 3]), side, side if rng.random() < 0.85 else rng.choice([8, 16]))
    k = rng.choice([1, 2, 10])
    if base == "pixel":
        data = hostile.pixel_archive(classes=k, image_shape=shape, per_class=1)
    elif base == "d3":
        data = hostile.d3_archive(classes=k, image_shape=shape, latent_dim=3, priors_per_class=1, decoder_width=8)
    else:
        data = hostile.d2m_archive(
            classes=k, image_shape=shape, width=4, samples_per_class=2, teacher_width=rng.choice([None, 4])
        )
    width, dtype = rng.choice([1, 2, 4, 8]), rng.choice(["int8", "float16"])
    temperature = rng.choice([1.0, 0.5, 1e-3, 1e3])
    described = {"network": "convnet3", "width": width, "temperature": temperature, "dtype": dtype}
    section, meta_field, edits = True, True, []
    for _ in range(rng.choice([0, 1, 1, 2])):
        r = rng.randrange(9)
        if r <= 4 and not isinstance(described, dict):  # an earlier edit made it another JSON value
            continue
        if r == 0:
            described["width"] = rng.choice([0, -1, 1, 2, 3, 4096, 4097, 50_000, 2**63, 1.5, "4", None, True])
        elif r == 1:
            described["temperature"] = rng.choice([0, 0.0, 1e-4, 1e-3, 1e3, 1e4, -1.0, "1", None, *BARE_NUMBERS])
        elif r == 2:
            described["dtype"] = rng.choice(["float16", "int8", "float32", "uint8", "", None, 8])
        elif r == 3:
            described["network"] = rng.choice(["lenet", "convnet3", "resnet18", "", None])
        elif r == 4:
            if rng.random() < 0.5 and described:
                described.pop(rng.choice(sorted(described)), None)
            else:
                described["extra"] = 1
        elif r == 5:
            section = False  # a description without its section
        elif r == 6:
            meta_field = False  # a section without its description
        elif r == 7:
            edits.append(
                (
                    rng.random(),
                    rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, 1e30, -1.0]),
                    rng.random() < 0.5,
                )
            )
        else:
            described = rng.choice([[], "convnet3", 4, {}])

    def change(tensors):  # one value, or a whole tensor, of a scale (int8) or weight (float16) made hostile
        for pick, value, whole in edits:
            floats = sorted(k for k, v in tensors.items() if v.is_floating_point())
            key = floats[int(pick * len(floats))]
            stored = torch.tensor(value).to(tensors[key].dtype)  # past float16's range: infinite
            if whole:
                tensors[key].fill_(stored)
            elif tensors[key].numel():
                tensors[key].view(-1)[0] = stored

    data = hostile.with_labeller(
        data,
        width=width,
        temperature=temperature,
        dtype=dtype,
        described=described,
        section=section,
        meta_field=meta_field,
        change=change if edits else None,
    )
    return _bare_numbers(data)


# -- checkpoints: an encoder's state file, damaged, then resumed ------------------------------------------------------

_CHECKPOINT: dict = {}
ITERATIONS = [
    "0",
    "7",
    "-1",
    "1e9",
    "2147483648",
    "2147483649",
    "99999999999",
    "",
    " 5",
    "5\n",
    "0x10",
    "²",
    "٣",
    "5.0",
    "NaN",
    "0" * 11,
    "x",
]


def _checkpoint_run():
    """The run a fuzzed checkpoint belongs to: a vector and a linear layer under Adam (two groups, one with
    its own betas), a matrix under SGD with momentum. Returns (learned tensors, modules, optimisers)."""
    x, m = torch.zeros(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)
    lin = torch.nn.Linear(2, 3)
    adam = torch.optim.Adam(
        [{"params": [x], "lr": 0.1}, {"params": list(lin.parameters()), "lr": 0.01, "betas": (0.5, 0.9)}]
    )
    sgd = torch.optim.SGD([m], lr=0.1, momentum=0.9)
    return {"x": x, "m": m}, {"lin": lin}, {"adam": adam, "sgd": sgd}


def _checkpoint_step(learned, modules, optimisers) -> None:
    """One training step, as an encoder takes after resuming."""
    for opt in optimisers.values():
        opt.zero_grad()
    loss = ((learned["x"] - 1) ** 2).sum() + modules["lin"](torch.ones(1, 2)).sum() + ((learned["m"] - 1) ** 2).sum()
    loss.backward()
    for opt in optimisers.values():
        opt.step()


def checkpoint_base() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A valid checkpoint of :func:`_checkpoint_run` after one step (iteration 5): its tensors and header
    metadata (copies: callers may change them)."""
    if not _CHECKPOINT:
        import tempfile

        from safetensors import safe_open

        from d3codec.encode.checkpoint import Checkpoint

        with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)  # the same file in every process
            learned, modules, optimisers = _checkpoint_run()
            _checkpoint_step(learned, modules, optimisers)
            ckpt = Checkpoint(Path(tmp) / "c.safetensors", "fuzz", "run")
            ckpt.save(
                5,
                {**{k: v.detach() for k, v in learned.items()}, "loss": torch.tensor(0.25)},
                optimisers,
                torch.Generator().manual_seed(1),
                modules,
            )
            with safe_open(str(ckpt.path), framework="pt") as f:
                _CHECKPOINT.update(tensors={k: f.get_tensor(k) for k in f.keys()}, meta=dict(f.metadata()))
    return dict(_CHECKPOINT["tensors"]), dict(_CHECKPOINT["meta"])


def _groups_change(groups, rng: random.Random):
    """The optimiser groups (JSON) with one value replaced by one of the same type or a near one: learning
    rates out of range, betas of other lengths, parameter indices swapped, repeated or out of range."""
    groups = json.loads(json.dumps(groups))
    name = rng.choice(sorted(groups)) if isinstance(groups, dict) and groups else None
    if name is None or not isinstance(groups[name], list) or not groups[name]:
        return groups
    group = rng.choice(groups[name])
    if not isinstance(group, dict) or not group:
        return groups
    key = rng.choice(sorted(group))
    group[key] = rng.choice(
        {
            "params": [[1, 0], [0, 0], [0, 5], ["0"], [], [0, 1, 2], [-1]],
            "betas": [[0.9], [0.9, 0.999, 0.5], [2.0, 3.0], [1e6, 1e7], ["a", "b"]],
        }.get(key, [0.5, 0, -1, 1e6, 1e7, 1, True, None, "0.1", [0.1], 2**70])
    )
    return groups


def _damaged_safetensors_header(data: bytes, rng: random.Random) -> bytes:
    """A safetensors file whose JSON header is changed and rewritten (its length field too, unless lying):
    metadata values that are not strings, other dtypes, shapes or offsets that do not fit the data."""
    n = struct.unpack_from("<Q", data)[0]
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    names = sorted(k for k in header if k != "__metadata__")
    r = rng.randrange(6)
    if r == 0:
        meta = header.setdefault("__metadata__", {})
        meta[rng.choice(sorted(meta) or ["x"])] = rng.choice([5, None, {"a": "b"}, ["1"], 1e308, True])
    elif r == 1 and names:
        header[rng.choice(names)]["dtype"] = rng.choice(
            ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "Q9", "F64", "C64", ""]
        )
    elif r == 2 and names:
        entry = header[rng.choice(names)]
        entry["shape"] = rng.choice([[2**40], [], [-1], [0], entry["shape"] + [1], [3, 2**62], [10**20]])
    elif r == 3 and names:
        entry = header[rng.choice(names)]
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[b, a], [a, b + 4], [0, 0], [a, 2**63], [a - 1, b - 1]])
    elif r == 4:
        text = json.dumps(header).encode()
        return struct.pack("<Q", rng.choice([len(text) + 1, len(text) - 1, 2**63, 0])) + text + body
    else:
        header["__metadata__"] = rng.choice([[], "x", {"a": "b" * 100_000}])
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def checkpoint_case(rng: random.Random) -> tuple[bytes, dict]:
    """A checkpoint of :func:`_checkpoint_run` with its header metadata (iteration, opt_groups: values, types,
    keys, lengths; format, kind, run) or its tensors (shapes, dtypes, NaN, missing, extra) damaged, and how
    to read it (resume, then one step)."""
    from safetensors.torch import save

    tensors, meta = checkpoint_base()
    groups = json.loads(meta["opt_groups"])
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        r = rng.randrange(13)
        if r == 0:
            meta["iteration"] = rng.choice(ITERATIONS)
        elif r <= 2:
            groups = mutate_json(groups, rng)
            meta["opt_groups"] = json.dumps(groups)
        elif r == 3:
            whole = json.dumps(groups)
            meta["opt_groups"] = rng.choice(
                [
                    "",
                    "NaN",
                    "[]",
                    "{}",
                    "null",
                    '{"adam": 1e400}',
                    "[" * 100_000 + "]" * 100_000,
                    whole[: rng.randrange(len(whole))],
                    '{"adam": [], "sgd": []}',
                    whole.replace("0.1", "NaN", 1),
                ]
            )
        elif r <= 5:
            groups = _groups_change(groups, rng)
            meta["opt_groups"] = json.dumps(groups)
        elif r == 6:
            key = rng.choice(["format", "kind", "run", "iteration", "opt_groups"])
            if rng.random() < 0.5:
                meta.pop(key)
            else:
                meta[key] = rng.choice(["", "x", "d3codec-encoder-checkpoint", "fuzz", "run"])
        elif r <= 8:
            tensors = mutate_tensors(tensors, rng)
        elif r == 9:  # an optimiser's state tensor
            key = rng.choice(sorted(k for k in tensors if k.startswith("opt.")) or ["opt.adam.0.step"])
            value = tensors.get(key, torch.tensor(1.0))
            tensors[key] = rng.choice(
                [
                    torch.tensor(-1.0),
                    torch.tensor(1e30),
                    torch.zeros(5),
                    torch.tensor([1.0, 2.0]),
                    value.to(torch.int64),
                    value.to(torch.float16),
                    value.to(torch.bfloat16),
                    value.to(torch.float64),
                    value.to(torch.bool),
                    value.reshape(1, -1),
                ]
            )
        elif r == 10:  # the random generators' states
            key = rng.choice(["rng.sampler", "rng.torch", "rng.cuda"])
            value = tensors.get(key, tensors.get("rng.torch", torch.zeros(16, dtype=torch.uint8)))
            tensors[key] = rng.choice(
                [
                    value[:-1].clone(),
                    value.to(torch.int32),
                    torch.zeros_like(value),
                    torch.full_like(value, 255),
                    value[:8].clone(),
                    torch.zeros(0, dtype=torch.uint8),
                ]
            )
        elif r == 11:  # tensors of no parameter, of a parameter out of range, of a name that cannot be split
            tensors[
                rng.choice(
                    [
                        "opt.adam.7.exp_avg",
                        "opt.adam.0.bogus",
                        "opt.adam.x.exp_avg",
                        "opt.adam.0",
                        "opt.adam.-1.exp_avg",
                        "state.lin.extra",
                        "opt.nothere.0.x",
                        "state.lin.weight",
                        "opt.sgd.0.momentum_buffer",
                    ]
                )
            ] = rng.choice([torch.zeros(3), torch.zeros(2, 2), torch.tensor(2.0), torch.zeros(3, 2)])
        else:
            tensors.pop(rng.choice(sorted(tensors)))
    data = save(tensors, metadata=meta)
    if rng.random() < 0.1:
        data = _damaged_safetensors_header(data, rng)
    return data, {"operation": "checkpoint"}


def _resume(path: Path):
    """Resume the checkpoint at ``path`` into a fresh :func:`_checkpoint_run`, then take one step."""
    from d3codec.encode.checkpoint import Checkpoint

    learned, modules, optimisers = _checkpoint_run()
    resumed = Checkpoint(path, "fuzz", "run").resume(
        optimisers, torch.Generator(), torch.device("cpu"), learned, modules
    )
    _checkpoint_step(learned, modules, optimisers)
    return torch.tensor([resumed[0]]), learned["x"].detach(), None


# -- files a user passes in: --teacher, --labeller, --generator ------------------------------------------------------

_STATES: dict = {}


def _state(kind: str, *args) -> dict[str, torch.Tensor]:
    """A valid state dict (cached; a copy): ``teacher`` (c, k, h, width) a ConvNet-3, ``generator`` (k, z, e,
    width, image_shape, architecture) a d2m ConditionalGenerator."""
    from d3codec.methods.d2m import ConditionalGenerator
    from d3codec.nn.models import ConvNet

    key = (kind, *args)
    if key not in _STATES:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if kind == "teacher":
                c, k, h, width = args
                net = ConvNet(c, k, h, width=width)
            else:
                net = ConditionalGenerator(*args)
        _STATES[key] = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    return dict(_STATES[key])


def user_file_case(rng: random.Random) -> tuple[bytes, dict]:
    """A teacher/labeller (ConvNet-3) or generator (d2m) safetensors file a user passes in, with hostile
    tensors (huge, zero or 0-d widths, NaN, other dtypes, missing or extra) or header metadata (``classes``,
    ``architecture``, ``kind``), and how to read it (load, then run the network on one input)."""
    from safetensors.torch import save

    from d3codec.methods.d2m.networks import GENERATORS, PRETRAINED_PREFIX

    if rng.random() < 0.5:
        c, k, h, width = rng.choice([1, 3]), rng.choice([2, 3, 10]), rng.choice([8, 16]), rng.choice([1, 2, 4, 8])
        tensors, meta = _state("teacher", c, k, h, width), {}
        opts = {"operation": "teacher", "image_shape": [c, h, h], "num_classes": k}
        r = rng.randrange(12)
        if r == 0:
            tensors = mutate_tensors(tensors, rng)
        elif r == 1:  # a huge declared width, and a classifier that agrees
            tensors = {
                "features.0.weight": torch.zeros(rng.choice([50_000, 4097, 4096]), 1, 1, 1),
                "classifier.weight": torch.zeros(k, 1),
            }
        elif r == 2:
            tensors = {"features.0.weight": torch.zeros(0, c, 3, 3), "classifier.weight": torch.zeros(k, 0)}
        elif r == 3:
            tensors = (
                {n: torch.tensor(1.0) for n in tensors}
                if rng.random() < 0.5
                else {**tensors, "features.0.weight": torch.tensor(1.0)}
            )
        elif r == 4:
            key = rng.choice(sorted(tensors))
            tensors[key] = torch.full_like(tensors[key], rng.choice([float("nan"), float("inf"), 1e30]))
        elif r == 5:
            key = rng.choice(sorted(tensors))
            tensors[key] = tensors[key].to(
                rng.choice([torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64, torch.bool])
            )
        elif r == 6:
            meta["classes"] = rng.choice(
                [
                    "0,1,2",
                    "0,0,1",
                    "-1,0,1",
                    "1,2,3",
                    "",
                    "x",
                    "0,1," * 10_000,
                    "٣,1,2",
                    " 1, 2 ,0",
                    "1e3",
                    "0x1",
                    ",".join(map(str, range(k))),
                    "2,1,0"[: 2 * k - 1],
                ]
            )
        elif r == 7:  # outputs: more than the dataset's classes, or none
            tensors["classifier.weight"] = torch.zeros(
                rng.choice([0, k + 1, 2**16]), tensors["classifier.weight"].shape[1]
            )
        elif r == 8:  # read for other images or classes
            opts["image_shape"] = rng.choice(
                [[c, h, h + 1], [3 if c == 1 else 1, h, h], [c, 4, 4], [c, 2 * h, 2 * h], [c, 4096, 4096]]
            )
            opts["num_classes"] = rng.choice([k, k - 1, 1, 1000])
        elif r == 9:
            tensors[rng.choice(["extra", "features.9.weight", "classifier.weight.scale"])] = torch.zeros(2)
        elif r == 10:
            tensors.pop(rng.choice(sorted(tensors)))
    else:
        k, z, e, width = rng.choice([2, 3]), rng.choice([1, 4]), rng.choice([1, 2]), rng.choice([4, 8])
        shape, arch = (
            rng.choice([(1, 8, 8), (1, 16, 16), (3, 16, 16), (1, 28, 28), (1, 16, 12)]),
            rng.choice(sorted(GENERATORS)),
        )
        tensors, meta = _state("generator", k, z, e, width, shape, arch), {"architecture": arch}
        opts = {"operation": "generator", "image_shape": list(shape), "num_classes": k}
        r = rng.randrange(12)
        if r == 0:
            tensors = mutate_tensors(tensors, rng)
        elif r == 1:
            meta["architecture"] = rng.choice(["upconv-v3", "", "UPCONV-V2", "upconv-v1", "upconv-v2", "\x1b[2J"])
        elif r == 2:
            meta.pop("architecture")
        elif r == 3:  # a pre-training checkpoint's generator, under its prefix or not
            meta["kind"] = "d2m-pretrain"
            if rng.random() < 0.7:
                tensors = {PRETRAINED_PREFIX + n: v for n, v in tensors.items()}
        elif r == 4:  # a huge declared embedding, noise or width
            h0 = 4 if shape[1] <= 16 else 7
            tensors["embedding.weight" if rng.random() < 0.5 else "fc.weight"] = rng.choice(
                [
                    torch.zeros(k, 50_000),
                    torch.zeros(50_000, e),
                    torch.zeros(4096 * h0 * h0, z + e),
                    torch.zeros(4097 * h0 * h0, z + e),
                    torch.zeros(width * h0 * h0, 5_000),
                ]
            )
        elif r == 5:  # zero widths, no noise
            tensors[rng.choice(["embedding.weight", "fc.weight"])] = rng.choice(
                [torch.zeros(0, e), torch.zeros(k, 0), torch.zeros(width * 16, e), torch.zeros(width * 16, 0)]
            )
        elif r == 6:
            tensors[rng.choice(["embedding.weight", "fc.weight"])] = torch.tensor(1.0)
        elif r == 7:
            key = rng.choice(sorted(tensors))
            tensors[key] = torch.full_like(tensors[key], rng.choice([float("nan"), float("inf"), 1e30]))
        elif r == 8:
            key = rng.choice(sorted(tensors))
            tensors[key] = tensors[key].to(rng.choice([torch.float16, torch.bfloat16, torch.int32, torch.bool]))
        elif r == 9:
            # a dataset's shapes (never a side of 0: no dataset has one)
            opts["image_shape"] = rng.choice([[shape[0], 8, 8], [3, 16, 16], [1, 4096, 4096], [1, 1, 1]])
            opts["num_classes"] = rng.choice([k, k + 1, 1])
        elif r == 10:
            tensors.pop(rng.choice(sorted(tensors)))
    data = save(tensors, metadata=meta or None)
    if rng.random() < 0.1:
        data = _damaged_safetensors_header(data, rng)
    return data, opts


def _load_user_file(path: Path, opts: dict):
    """Load ``path`` as ``opts['operation']`` says, as compress does, and run the network on one input."""
    shape, k = tuple(opts["image_shape"]), opts["num_classes"]
    if opts["operation"] == "teacher":
        from d3codec.nn.teacher import load_teacher

        teacher = load_teacher(path, shape, k)
        with torch.no_grad():
            out = teacher.net(torch.zeros(1, *shape))
        return out, torch.tensor(teacher.classes), None
    from d3codec.methods.d2m import ConditionalGenerator
    from d3codec.methods.d2m.networks import load_generator

    given = load_generator(path, k, shape)
    net = ConditionalGenerator(k, given.noise_dim, given.embed_dim, given.width, shape, given.architecture)
    net.load_state_dict(given.state)
    with torch.no_grad():
        out = net(torch.zeros(1, given.noise_dim), torch.zeros(1, dtype=torch.long))
    return out, None, None


# -- folder trees a user passes in ------------------------------------------------------------------------------------

FOLDER_IMAGES = (
    "png-L",
    "png-RGB",
    "png-RGBA",
    "png-P",
    "png-1",
    "png-I;16",
    "jpg-L",
    "jpg-RGB",
    "jpg-CMYK",
    "bmp-RGB",
    "tif-RGB",
)
FOLDER_HOSTILE = (
    "link-dot",
    "link-up",
    "link-root",
    "class-link",
    "class-link-root",
    "fifo",
    "fifo-root",
    "empty",
    "truncated",
    "text",
    "huge",
    "huge-lie",
    "strip",
    "near-limit",
    "near-limit-lie",
    "jpeg-lie",
    "ppm-lie",
    "text-bomb",
    "dangling",
    "link-out",
    "odd-name",
    "odd-class",
    "deep",
    "dir-png",
    "empty-class",
    "no-class",
    "only-hostile",
    "png-as-jpg",
)
ODD_NAMES = (
    "\x1b[2J.png",
    "a\nb.png",
    "-x.png",
    " .png",
    "." + "a" * 240 + ".png",
    "\udcff\udcfe.png",
    "名前.png",
    "x.PNG",
    "x.png.",
    "\r.jpg",
    "%s%n.png",
    "$(reboot).png",
)
ODD_CLASSES = ("\x1b[31mred", "\udcff", "b" * 250, "-rf", "c\nd", " ", "..a", "名前")
_IMAGE_BYTES: dict = {}


def _png(width: int, height: int, depth: int = 1, colour: int = 0, data: bool = True, text_bomb: bool = False) -> bytes:
    """A PNG of zero pixels written chunk by chunk (no image in memory): ``data`` False writes a few rows only
    (the header lies), ``text_bomb`` adds a zTXt chunk inflating to 64 MiB."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    row = 1 + (width * depth * {0: 1, 2: 3, 4: 2, 6: 4}[colour] + 7) // 8
    co, idat, rows = zlib.compressobj(9), [], height if data else min(height, 4)
    block = bytes(row * max(1, min(rows, (8 << 20) // row)))
    done = 0
    while done < rows:
        take = min(rows - done, len(block) // row)
        idat.append(co.compress(block[: take * row]))
        done += take
    idat.append(co.flush())
    extra = chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(bytes(64 << 20), 9)) if text_bomb else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
        + extra
        + chunk(b"IDAT", b"".join(idat))
        + chunk(b"IEND", b"")
    )


def _image_bytes(kind: str, size: tuple[int, int]) -> bytes:
    """A small image file (cached): ``kind`` one of FOLDER_IMAGES ("format-mode"), ``size`` (width, height)."""
    key = (kind, size)
    if key not in _IMAGE_BYTES:
        import io

        from PIL import Image

        fmt, mode = kind.split("-", 1)
        image = Image.linear_gradient("L").resize(size)
        image = image.convert(mode) if mode != "I;16" else image.convert("I").point(lambda v: v * 200).convert("I;16")
        out = io.BytesIO()
        image.save(out, {"jpg": "JPEG", "png": "PNG", "bmp": "BMP", "tif": "TIFF"}[fmt])
        _IMAGE_BYTES[key] = out.getvalue()
    return _IMAGE_BYTES[key]


def _hostile_bytes(what: str, variant: int) -> bytes:
    """The bytes of a hostile image file (cached)."""
    key = ("hostile", what, variant)
    if key not in _IMAGE_BYTES:
        if what == "huge":
            data = _png(20_000, 20_000)  # a few KB: 400 million pixels
        elif what == "huge-lie":
            data = _png(*[(20_000, 20_000), (65_535, 65_535), (2**31 - 1, 1)][variant % 3], data=False)
        elif what == "strip":
            data = _png(*[(1, 2_000_000), (2_000_000, 1)][variant % 2])
        elif what == "near-limit":  # the most pixels a folder image may have (MAX_IMAGE_PIXELS), RGB or grey
            data = _png(11_585, 11_585, 8, [2, 0][variant % 2])
        elif what == "near-limit-lie":  # the same declared, a few rows stored: a file of a few hundred bytes
            data = _png(11_585, 11_585, *[(8, 6), (8, 2), (16, 2), (16, 0), (1, 0)][variant % 5], data=False)
        elif what == "jpeg-lie":  # a tiny JPEG whose frame header declares other sides
            data = bytearray(_image_bytes("jpg-RGB", (8, 8)))
            at = data.index(b"\xff\xc0") + 5
            struct.pack_into(">HH", data, at, *[(65_535, 65_535), (65_535, 100), (0, 10), (8, 65_535)][variant % 4])
            data = bytes(data)
        elif what == "ppm-lie":
            data = [
                b"P6 11000 11000 255\n" + bytes(100),
                b"P5 0 0 255\n",
                b"P6 99999999999 1 255\n" + bytes(3),
                b"P5 8 8 65535\n" + bytes(10),
            ][variant % 4]
        elif what == "text-bomb":
            data = _png(8, 8, text_bomb=True)
        elif what == "truncated":
            whole = _image_bytes(["png-RGB", "jpg-RGB", "bmp-RGB", "tif-RGB"][variant % 4], (12, 12))
            data = whole[: len(whole) // 2]
        elif what == "text":
            data = b"not an image\n" * 10
        elif what == "png-as-jpg":
            data = _image_bytes("png-RGB", (12, 12))
        else:
            data = b""
        _IMAGE_BYTES[key] = data
    return _IMAGE_BYTES[key]


def _hostile_thing(rng: random.Random) -> str:
    """One of FOLDER_HOSTILE, images at the pixel limit a quarter as often as the others (each read takes
    seconds)."""
    what = rng.choice(FOLDER_HOSTILE)
    return rng.choice(FOLDER_HOSTILE) if what.startswith("near-limit") and rng.random() < 0.75 else what


def folder_recipe(rng: random.Random) -> dict:
    """A small class-per-folder tree (2 or 3 classes of 1 to 3 tiny images) with 0 to 3 hostile things, and how to
    read it (``load_workers``, how many times each image is read: 64 reads or more go to the workers)."""
    classes = ["a", "b", "c"][: rng.choice([2, 3])]
    images = []
    for i in range(len(classes)):
        for j in range(rng.choice([1, 2, 3])):
            kind = rng.choice(FOLDER_IMAGES)
            size = rng.choice([(8, 8), (12, 12), (16, 9), (5, 5), (1, 1), (31, 20), (3, 40)])
            images.append([i, f"{j}.{kind.split('-')[0]}", kind, list(size)])
    hostile = [
        [_hostile_thing(rng), rng.randrange(len(classes)), rng.randrange(12)]
        for _ in range(rng.choice([0, 1, 1, 2, 3]))
    ]
    workers = rng.choice([0, 0, 2])
    return {
        "classes": classes,
        "images": images,
        "hostile": hostile,
        "workers": workers,
        "repeat": rng.choice([1, 1, 40]) if workers else 1,
    }


def build_tree(base: Path, recipe: dict) -> Path:
    """Write ``recipe``'s tree under ``base`` (an empty folder); returns its root."""
    import os

    root = base / "tree"
    classes = list(recipe["classes"])
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, name, kind, size in recipe["images"]:
        (root / classes[i] / name).write_bytes(_image_bytes(kind, tuple(size)))
    for n, (what, i, variant) in enumerate(recipe["hostile"]):  # n: names stay apart when a thing comes twice
        folder = root / classes[i]
        if what in ("link-dot", "link-up", "link-root"):
            os.symlink(
                {"link-dot": ".", "link-up": "..", "link-root": "/"}[what],
                folder / [f"loop{n}", f"x{n}.png"][variant % 2],
            )
        elif what == "class-link":
            os.symlink(folder, root / f"zz{n}")
        elif what == "class-link-root":
            os.symlink("/", root / f"zz-root{n}")
        elif what == "fifo":
            os.mkfifo(folder / f"00{n}.png")
        elif what == "fifo-root":
            os.mkfifo(root / f"pipe{n}")
        elif what == "dangling":
            os.symlink(base / "nowhere.png", folder / f"dangling{n}.png")
        elif what == "link-out":
            os.symlink(["/etc/passwd", "/dev/zero", "/dev/null", "/proc/self/mem"][variant % 4], folder / f"out{n}.png")
        elif what == "odd-name":
            (folder / f"{n}{ODD_NAMES[variant % len(ODD_NAMES)]}").write_bytes(_image_bytes("png-RGB", (8, 8)))
        elif what == "odd-class":
            odd = root / f"{ODD_CLASSES[variant % len(ODD_CLASSES)]}{n}"
            odd.mkdir(exist_ok=True)
            (odd / "0.png").write_bytes(_image_bytes("png-L", (8, 8)))
        elif what == "deep":
            deep = folder.joinpath(*["d"] * (12 + variant))
            deep.mkdir(parents=True, exist_ok=True)
            (deep / f"deep{n}.png").write_bytes(_image_bytes("png-L", (8, 8)))
        elif what == "dir-png":
            (folder / f"d{n}.png").mkdir(exist_ok=True)
        elif what == "empty-class":
            (root / "empty").mkdir(exist_ok=True)
        elif what == "no-class":  # done last
            pass
        elif what == "only-hostile":  # a class whose every image is unreadable
            for f in folder.iterdir():
                if f.is_file() and not f.is_symlink():
                    f.write_bytes(b"")
        else:
            suffix = ".jpg" if what in ("jpeg-lie", "png-as-jpg") else ".ppm" if what == "ppm-lie" else ".png"
            (folder / f"{what}{n}{suffix}").write_bytes(_hostile_bytes(what, variant))
    if any(what == "no-class" for what, _, _ in recipe["hostile"]):  # images at the root, no class folder
        import shutil

        for name in classes:
            shutil.rmtree(root / name)
            (root / f"{name}.png").write_bytes(_image_bytes("png-L", (8, 8)))
    return root


def _read_folder(opts: dict):
    """Load the tree at ``opts['root']`` as ``d3 compress FOLDER`` does (8-pixel images) and read every image
    ``opts['repeat']`` times."""
    from d3codec.data.sources import load_dataset

    real = load_dataset(opts["root"], resolution=8, load_workers=opts["workers"])
    images = real.read_uint8(torch.arange(len(real.train)).repeat(opts["repeat"]))
    return images, real.train_targets, None


NEW_SURFACES = ("checkpoint", "teacher", "generator", "folder")  # the read operations of files that are not archives


def read_user_input(data: bytes, opts: dict, folder: Path | None = None):
    """Read a checkpoint, a user's network file or a folder tree as d3codec would; any D3Error is a refusal
    (raised as D3FormatError)."""
    import tempfile

    try:
        if opts["operation"] == "folder":
            return _read_folder(opts)
        with tempfile.TemporaryDirectory(dir=folder) as tmp, torch.random.fork_rng(devices=[]):
            path = Path(tmp) / "file.safetensors"
            path.write_bytes(data)
            return _resume(path) if opts["operation"] == "checkpoint" else _load_user_file(path, opts)
    except D3FormatError:
        raise
    except D3Error as error:
        raise D3FormatError(str(error)) from None


# -- the oracle -------------------------------------------------------------------------------------


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


def read_like_a_user(data: bytes, opts: dict | None = None, folder: Path | None = None):
    """Read ``data`` as a user would, under FUZZ_LIMITS; returns what was read (for comparisons)."""
    from d3codec.decode.expand import grid_image
    from d3codec.decode.verify import verify_archive
    from d3codec.methods.d3.merge import merge_archives

    opts = opts or {"samples_per_class": 2 if _is_sampled(data) else None, "operation": "dataset"}
    operation = opts["operation"]
    if operation in NEW_SURFACES:
        return read_user_input(data, opts, folder)
    if operation == "verify":
        result = verify_archive(data, FUZZ_LIMITS)  # never raises for a bad archive: a failed check is a refusal
        if not result.ok:
            raise D3FormatError(f"{result.failure[0]}: {result.failure[1]}")
        return (torch.tensor([len(result.checks)]), None, None)
    if operation == "merge":
        import tempfile

        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            a, b = Path(tmp) / "a.d3", Path(tmp) / "b.d3"
            a.write_bytes(data)
            b.write_bytes(opts["other"])
            try:
                merge_archives([a, b], Path(tmp) / "m.d3", limits=FUZZ_LIMITS)
            except D3FormatError:
                raise
            except D3Error as error:  # parts that cannot be merged, a budget the merge passes: a refusal too
                raise D3FormatError(str(error)) from None
            merged = D3Dataset(Path(tmp) / "m.d3", samples_per_class=1, limits=FUZZ_LIMITS)
        return merged.images, merged.labels, merged.soft_labels
    spc = opts["samples_per_class"] if _is_sampled(data) else None
    ds = D3Dataset(data, samples_per_class=spc, limits=FUZZ_LIMITS)
    if operation == "grid":
        grid_image(ds, max_pixels=FUZZ_LIMITS.max_canvas_pixels)
    if ds.labeller is not None:  # a student asks the stored labeller (or D2M's teacher) for soft labels
        ds.labeller(ds.images[:2])
    return ds.images, ds.labels, ds.soft_labels


def _is_sampled(data: bytes) -> bool:
    try:
        with D3Reader(data) as r:
            return json.loads(r.read_bytes("meta")).get("method") in ("d3", "d2m")
    except Exception:
        return False


def _peak_rss() -> int:
    """This process's peak resident memory (VmHWM) in bytes, or 0 where /proc does not tell."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> int:
    """Reset the peak to the present resident size (Linux ≥ 4.0); returns it, or 0 where it cannot.

    Free memory the allocator keeps (d3codec.util.runtime keeps freed buffers) is given back first
    (glibc's malloc_trim), so that a case reusing it still shows as growth."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _peak_rss()
    except OSError:
        return 0


OUTCOMES = {"read": 0, "refused": 0, "unwritable": 0}  # how the cases ended that were not findings
BY_KIND: dict[str, dict[str, int]] = {}  # the same, per mutation family, and the seconds its reads took


def check_case(
    original: bytes, mutated: bytes, byte_mutation: bool, seconds: float = CASE_SECONDS, opts: dict | None = None
) -> str | None:
    """None when the read behaved, else a description of the finding."""
    base = _reset_peak_rss()
    start = time.time()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        got = read_like_a_user(mutated, opts)
    except D3FormatError:
        OUTCOMES["refused"] += 1
        got = None
    except CaseTimeout:
        return f"no answer within {seconds} s"
    except Exception:  # noqa: BLE001 - every other exception is what we are looking for
        return traceback.format_exc(limit=-8)  # the innermost frames: where it broke
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed, grown = time.time() - start, (_peak_rss() - base if base else 0)
    if elapsed > seconds:  # a long C++ call the alarm could not interrupt
        return f"took {elapsed:.1f} s, over {seconds} s"
    if grown > CASE_MEMORY_BYTES:
        return f"peak memory grew by {grown >> 20} MiB while decoding, over {CASE_MEMORY_BYTES >> 20} MiB"
    if got is None:
        return None
    OUTCOMES["read"] += 1
    if byte_mutation and mutated != original:  # the checksums cover every byte: success means same data
        want = read_like_a_user(original, opts)
        if not all(
            (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
            for a, b in zip(got, want)
        ):
            return "a damaged archive was read as different data"
    return None


# the share of the cases each family gets (the rest of the draw goes to the next): archives mutated byte by byte,
# structurally and at the method layer keep 85 %; checkpoints, users' network files and folder trees 5 % each
SHARES = (
    ("byte", 0.27),
    ("structural", 0.38),
    ("method-layer", 0.20),
    ("checkpoint", 0.05),
    ("user file", 0.05),
    ("folder", 0.05),
)


def _family(draw: float) -> str:
    for kind, share in SHARES:
        if draw < share:
            return kind
        draw -= share
    return SHARES[-1][0]


def warm_up(seeds: dict[str, bytes], folder: Path) -> None:
    """Read every seed archive and one valid instance of each other surface, untimed: torch's and torchvision's
    one-time lazy imports (the first FlopCounterMode measurement of a network takes seconds) are not any case's
    doing."""
    import shutil
    import tempfile

    from safetensors.torch import save

    for data in seeds.values():
        read_like_a_user(data)
    tensors, meta = checkpoint_base()
    read_like_a_user(save(tensors, metadata=meta), {"operation": "checkpoint"}, folder)
    read_like_a_user(
        save(_state("teacher", 1, 2, 8, 2)),
        {"operation": "teacher", "image_shape": [1, 8, 8], "num_classes": 2},
        folder,
    )
    read_like_a_user(
        save(_state("generator", 2, 1, 1, 4, (1, 8, 8), "upconv-v2")),
        {"operation": "generator", "image_shape": [1, 8, 8], "num_classes": 2},
        folder,
    )
    base = Path(tempfile.mkdtemp(prefix="d3fuzz-"))
    try:
        recipe = {
            "classes": ["a", "b"],
            "images": [[0, "0.png", "png-L", [8, 8]], [1, "0.jpg", "jpg-RGB", [8, 8]]],
            "hostile": [],
            "workers": 0,
            "repeat": 1,
        }
        read_like_a_user(
            b"", {"operation": "folder", "root": str(build_tree(base, recipe)), "workers": 0, "repeat": 1}, folder
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(
    cases: int, seed: int, folder: Path, log=print, stop_at_first: bool = False, only: int | None = None
) -> list[tuple[str, str, str]]:
    """Try ``cases`` mutations; returns the findings (seed archive or family, mutation kind, description).

    ``only``: read case ``only`` alone (the others are drawn, not read: the same draws as a full run), to
    reproduce a finding."""
    import shutil
    import tempfile

    seeds = seed_archives(folder)
    warm_up(seeds, folder)
    rng = random.Random(seed)
    findings = []
    start = time.time()
    for case in range(1, cases + 1):
        name = rng.choice(sorted(seeds))
        original = seeds[name]
        kind = _family(rng.random())
        opts = None
        try:
            if kind == "method-layer":
                name, (mutated, opts) = "method-layer", method_layer(rng)
                original = mutated
                if rng.random() < 0.25:  # and its metadata mutated on top
                    mutated = structural(mutated, rng)
            elif kind in ("checkpoint", "user file"):
                name, (mutated, opts) = kind, (checkpoint_case(rng) if kind == "checkpoint" else user_file_case(rng))
                original = mutated
            elif kind == "folder":
                recipe = folder_recipe(rng)
                name, mutated, original = "folder", b"", b""
                opts = {
                    "operation": "folder",
                    "recipe": recipe,
                    "workers": recipe["workers"],
                    "repeat": recipe["repeat"],
                }
            else:
                mutated = byte_level(original, rng) if kind == "byte" else structural(original, rng)
                if rng.random() < 0.3:
                    sampled = _is_sampled(original)
                    opts = {
                        "samples_per_class": rng.choice([None, 1, 3]) if sampled else None,
                        "operation": rng.choice(["dataset", "verify", "grid"]),
                    }
        except (TypeError, ValueError, OverflowError, RuntimeError, IndexError, KeyError) as e:  # not writable
            OUTCOMES["unwritable"] += 1
            log(f"case {case}: mutation not written ({type(e).__name__}: {e}); counted, not read")
            continue
        for _ in range(rng.choice([0, 0, 0, 1]) if kind in ("byte", "structural") else 0):  # sometimes a second one
            try:
                mutated = structural(mutated, rng)
            except Exception:  # noqa: BLE001 - the first mutation left nothing to mutate further
                break
        if only is not None and case != only:
            continue
        tree = None
        if kind == "folder":
            tree = Path(tempfile.mkdtemp(prefix="d3fuzz-"))
            try:
                opts["root"] = str(build_tree(tree, opts["recipe"]))
            except (OSError, ValueError) as e:  # e.g. a file system without FIFOs or links
                shutil.rmtree(tree, ignore_errors=True)
                OUTCOMES["unwritable"] += 1
                log(f"case {case}: tree not written ({type(e).__name__}: {e}); counted, not read")
                continue
        before, began = dict(OUTCOMES), time.time()
        try:
            finding = check_case(original, mutated, kind == "byte", opts=opts)
        finally:
            if tree is not None:
                shutil.rmtree(tree, ignore_errors=True)
        tally = BY_KIND.setdefault(kind, {"read": 0, "refused": 0, "found": 0, "seconds": 0.0})
        tally["seconds"] += time.time() - began
        for key in ("read", "refused"):
            tally[key] += OUTCOMES[key] - before[key]
        tally["found"] += finding is not None
        if finding is not None:
            findings.append((name, kind, finding))
            shown = opts and {k: v for k, v in opts.items() if k not in ("other", "root")}
            if kind in ("checkpoint", "user file"):  # to reproduce: read it as the log says, or run with --case
                (folder / f"finding-{seed}-{case}.safetensors").write_bytes(mutated)
            elif kind == "folder":
                (folder / f"finding-{seed}-{case}.json").write_text(json.dumps(shown))
            else:
                (folder / f"finding-{seed}-{case}.d3").write_bytes(mutated)
            log(f"case {case} ({name}, {kind}, {shown}): {finding}")
            if stop_at_first:
                break
        if case % 1000 == 0:
            log(
                f"{case} cases tried, {len(findings)} found ({OUTCOMES['read']} read, {OUTCOMES['refused']} refused "
                f"with D3FormatError), {time.time() - start:.0f} s"
            )
    return findings


def limit_memory(extra_gib: float) -> None:
    """Cap the process's address space at its present size plus ``extra_gib``: an allocation past it
    fails (torch raises RuntimeError, Python MemoryError), which the oracle reports as a finding."""
    import resource

    size = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    cap = size + int(extra_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seeds-folder", default=str(Path(__file__).resolve().parent.parent / ".fuzz-seeds"))
    p.add_argument(
        "--case", type=int, default=None, help="read only this case of the run (the same draws), to reproduce a finding"
    )
    p.add_argument(
        "--memory-gib",
        type=float,
        default=4.0,
        help="address space a case may add beyond what the process holds after loading (GiB)",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    # hostile zero-size shapes are costed on the meta device; torch's note on each is noise in a long log
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
    seed_archives(Path(args.seeds_folder))
    limit_memory(args.memory_gib)
    findings = run(args.cases, args.seed, Path(args.seeds_folder), only=args.case)
    print(
        f"{args.cases if args.case is None else 1} cases tried, {len(findings)} found ({OUTCOMES['read']} read, "
        f"{OUTCOMES['refused']} refused with D3FormatError, {OUTCOMES['unwritable']} mutations the harness could "
        "not write)"
    )
    for kind, tally in sorted(BY_KIND.items()):
        print(
            f"  {kind}: {tally['read']} read, {tally['refused']} refused, {tally['found']} found "
            f"({tally['seconds']:.0f} s reading)"
        )
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
