"""Fuzzing .d3 archives: mutate valid archives of every method and read them as a user would.

The oracle: reading a mutated archive as a user would (``D3Dataset`` at the archive's default draw or
at a drawn sample count, ``d3 verify``, the ``--grid`` picture, ``d3 merge`` with another part), under
the stated decode limits FUZZ_LIMITS, either succeeds or raises ``D3FormatError`` (merge: any
``D3Error``; verify: a failed check, never an exception). Any other exception, a case running past
CASE_SECONDS, or one whose peak resident memory grows by more than CASE_MEMORY_BYTES *while decoding*
(measured by resetting the kernel's high-water mark, /proc/self/clear_refs, before each case) is a
finding. Three families of mutations:

- byte-level (bit flips, byte changes, truncation, splices, lying table lengths, huge declared
  sizes, extra bytes): the checksums must catch them, so a read that succeeds must give exactly
  the original data;
- structural, with every checksum recomputed, so that the parsers and the methods' decoders see
  them: metadata fields deleted or replaced by other JSON values (wrong types, huge or negative
  numbers, deep or long values), tensors re-typed, reshaped, dropped, added or filled with
  non-finite or huge values, sections dropped, duplicated, reordered, flipped critical, unknown
  critical or ancillary sections added, deep or huge JSON, damaged safetensors headers;
- method-layer, consistent: archives of every method written afresh (tests/hostile.py) with their
  declared shapes, widths, class counts, priors, sample sizes and architecture configs drawn from
  hostile ranges (4096-pixel sides, a million priors, ten million samples, widths that a GroupNorm
  cannot split, images too small for a network), tensors of exactly those shapes, and the budgets
  of merge parts replaced by other JSON values: only the decode budget and the value rules stand
  between such an archive and the machine.

Run as a script for a long run (it prints the cases tried and the findings):

    python tests/fuzz_archives.py --cases 100000 --seed 1

tests/test_fuzz.py runs a CI-sized share of the same cases.
"""

from __future__ import annotations

import argparse
import json
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
from d3codec.container import FIXED_HEADER, Content, D3Reader, Section, encode_archive  # noqa: E402
from d3codec.errors import D3Error, D3FormatError  # noqa: E402

CASE_SECONDS = 5.0
CASE_MEMORY_BYTES = 768 << 20  # peak resident memory a case may add while it reads and decodes
# the decode budget the oracle reads under (a user's smaller machine): a case that decodes within these
# must stay within CASE_SECONDS and CASE_MEMORY_BYTES, and one over them must be refused before allocating
FUZZ_LIMITS = DecodeLimits(max_bytes=32 << 20, max_parameters=1 << 24, max_macs_per_image=1 << 28, max_macs=1 << 31,
                           max_canvas_pixels=1 << 24, max_section_bytes=64 << 20, working_bytes=64 << 20)


# -- seeds: one small valid archive of each kind ------------------------------------------------

def seed_archives(folder: Path) -> dict[str, bytes]:
    """Valid archives of every method and storage kind, built once into ``folder`` (cached)."""
    from conftest import make_tiny_real
    from d3codec.encoding import compress
    from d3codec.methods.pixel import BPTTEncoder
    from d3codec.methods.d2m import D2MEncoder
    from d3codec.methods.d3 import D3Encoder
    from d3codec.methods.pixel import DMEncoder

    folder.mkdir(parents=True, exist_ok=True)
    tiny = dict(teacher_epochs=1.0, teacher_width=8, embed_width=8, real_per_class=4)
    tiny_d2m = dict(pretrain_iterations=2, pretrain_batch=8, disc_width=4, iterations=1, synthetic_per_class=4,
                    noise_dim=4, embed_dim=4, **tiny)
    builders = {
        "dm-uint8": (lambda: DMEncoder.from_options("fast", iterations=1, real_per_class=4, embed_width=8), 6_000),
        "dm-float16": (lambda: DMEncoder.from_options("fast", iterations=1, real_per_class=4, embed_width=8,
                                                         storage_dtype="float16"), 6_000),
        "bptt-fixed": (lambda: BPTTEncoder.from_options("fast", iterations=1, real_per_class=4, images_per_class=2,
                                                        inner_epochs=1), 60_000),
        "bptt-random": (lambda: BPTTEncoder.from_options("fast", iterations=1, real_per_class=4, images_per_class=2,
                                                         init="random", inner_epochs=1), 6_000),
        "d3-int8": (lambda: D3Encoder.from_options("fast", iterations=1, init_iterations=2, synthetic_per_class=4,
                                                   prior_dtype="int8", **tiny), 20_000),
        "d3-float16": (lambda: D3Encoder.from_options("fast", iterations=1, init_iterations=2, synthetic_per_class=4,
                                                      decoder_dtype="float16", **tiny), 20_000),
        "d2m": (lambda: D2MEncoder.from_options("fast", None, None, str(folder / "d2m.ckpt"), **tiny_d2m), 20_000),
        "d2m-soft-labels": (lambda: D2MEncoder.from_options("fast", None, None, str(folder / "d2m-soft.ckpt"),
                                                            soft_labels=True, **tiny_d2m), 30_000),
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
        return rng.choice([0, -1, 1, 2, 3, 2 ** 31, 2 ** 63, -2 ** 63, 10 ** 30])
    if choice == 3:
        return rng.choice([0.0, -1.5, 1e308, -1e308, 1e-320, 0.5])
    if choice == 4:
        return rng.choice(["", "x", "lenet", "fixed", "random", "int8", "float16", "uint8", "upconv-v2", "pixel",
                           "d3", "d2m", "bptt", "\u0000", "a" * 10_000])
    if choice == 5:
        return [random_json_value(rng, depth + 1) for _ in range(rng.randrange(4))] if depth < 4 else []
    if choice == 6:
        return {str(rng.randrange(5)): random_json_value(rng, depth + 1) for _ in range(rng.randrange(3))} \
            if depth < 4 else {}
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
        tensors[key] = value.to(rng.choice([torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16,
                                            torch.float32, torch.float64, torch.bool]))
    elif choice == 2:
        tensors[key] = value.flatten()[:max(0, value.numel() - rng.randrange(1, 3))].clone()
    elif choice == 3:
        tensors[key] = torch.zeros(*[rng.choice([0, 1, 2, 3, 7]) for _ in range(rng.randrange(0, 5))],
                                   dtype=value.dtype)
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
        tensors[f"{key}.extra" if rng.random() < 0.5 else rng.choice(["scale", "range", "labels", "images"])] = \
            torch.zeros(rng.randrange(0, 4))
    elif choice == 7:
        other = rng.choice(sorted(tensors))
        tensors[key], tensors[other] = tensors[other], tensors[key]
    else:
        tensors[key] = value.reshape(-1) if value.dim() != 1 else value.reshape(1, -1)
    return tensors


def safetensors_with_lying_header(rng: random.Random) -> bytes:
    shape = rng.choice([[2 ** 40], [2 ** 20, 2 ** 20], [-1], [3], [10 ** 18, 10 ** 18]])
    header = json.dumps({"x": {"dtype": rng.choice(["F32", "U8", "Q9"]), "shape": shape,
                               "data_offsets": [0, rng.choice([0, 4, 12, 2 ** 40])]}}).encode()
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
        sections.insert(rng.randrange(len(sections) + 1),
                        Section.raw(rng.choice(["zz", "future", "images2"]), bytes(rng.randrange(64)),
                                    critical=rng.random() < 0.5))
    elif choice == 9:  # deep or huge JSON in meta
        sections[0] = Section("meta", rng.choice([b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 50_000 + b"1" +
                                                  b"}" * 50_000, b'{"format": "d3", "x": "' + b"a" * 3_000_000 + b'"}',
                                                  b"\xff\xfe", b"NaN", b'{"format": NaN}']), Content.JSON)
    elif choice == 10:  # a damaged safetensors header
        idx = [i for i, s in enumerate(sections) if s.content == Content.SAFETENSORS]
        if idx:
            i = rng.choice(idx)
            sections[i] = Section(sections[i].name, safetensors_with_lying_header(rng), Content.SAFETENSORS,
                                  sections[i].critical)
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
        out = out[:rng.randrange(len(out))]
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
        value = rng.choice([0, 1, 2 ** 31, 2 ** 32 - 1, struct.unpack_from("<I", out, at)[0] + rng.choice([-1, 1])])
        struct.pack_into("<I", out, at, value % 2 ** 32)
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
    from d3codec.limits import network_cost
    from d3codec.methods.d2m import ConditionalGenerator
    from d3codec.models import Decoder

    method = rng.choice(["d3", "d3", "d2m", "d2m", "pixel", "merge"])
    spc = rng.choice([None, None, 1, 2, 7, 1000, 10 ** 5, 10 ** 7])
    opts = {"samples_per_class": spc, "operation": rng.choice(["dataset", "dataset", "verify", "grid"])}
    if method in ("d3", "merge"):
        shape = _shape(rng)
        k = rng.choice([1, 2, 3, 10, 1000])
        z, p = rng.choice([1, 3, 64, 4096]), rng.choice([1, 2, 5, 1000, 10 ** 6])
        w = rng.choice([1, 2, 3, 4, 6, 8, 64, 256, 4096])
        groups, soft = rng.randint(1, min(k, 3)), rng.random() < 0.5
        if k * p * (2 * z + (k if soft else 0)) > BUILD_VALUES:
            p = max(1, BUILD_VALUES // (k * (2 * z + (k if soft else 0))))
        if k * p * (2 * z + (k if soft else 0)) > BUILD_VALUES:
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
            data = hostile.d3_archive(classes=k, image_shape=shape, latent_dim=z, priors_per_class=p, decoder_width=w,
                                      groups=groups, soft_labels=soft,
                                      dtype=rng.choice(["int8", "float16"]))
        except (ValueError, RuntimeError):  # a width GroupNorm cannot split: declare it, store width 8's tensors
            data = _redeclare(hostile.d3_archive(classes=k, image_shape=shape, latent_dim=z, priors_per_class=p,
                                                 decoder_width=8, groups=groups), "decoder_width", w)
        if method == "merge":
            other = hostile.d3_archive(classes=2, image_shape=shape, latent_dim=z, priors_per_class=1, decoder_width=8,
                                       ds={**hostile.dataset(2, shape), "classes": ["other-a", "other-b"]})
            data = _merge_budget(data, rng)
            opts = {"operation": "merge", "other": other}
        return data, opts
    if method == "d2m":
        shape = _shape(rng)
        k = rng.choice([1, 2, 10, 1000])
        z, e = rng.choice([1, 3, 64, 4096]), rng.choice([1, 2, 64])
        w = rng.choice([4, 6, 8, 64, 512, 4096])
        try:
            values = network_cost(lambda: ConditionalGenerator(k, z, e, w, shape), lambda: (
                torch.zeros(1, z), torch.zeros(1, dtype=torch.long)), "g").parameters
        except D3FormatError:
            values = BUILD_VALUES + 1
        if values > BUILD_VALUES:
            w, z, e = 4, min(z, 64), min(e, 64)
        teacher = rng.choice([None, None, 1, 2, 8, 64])
        data = hostile.d2m_archive(classes=k, image_shape=shape, noise_dim=z, embed_dim=e, width=w,
                                   samples_per_class=rng.choice([1, 3, 10 ** 4, 10 ** 6, 10 ** 7]),
                                   teacher_width=teacher, dtype=rng.choice(["int8", "float16"]))
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


# -- the oracle -------------------------------------------------------------------------------------

class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


def read_like_a_user(data: bytes, opts: dict | None = None, folder: Path | None = None):
    """Read ``data`` as a user would, under FUZZ_LIMITS; returns what was read (for comparisons)."""
    from d3codec.expand import grid_image
    from d3codec.methods.d3.merge import merge_archives
    from d3codec.verify import verify_archive

    opts = opts or {"samples_per_class": 2 if _is_sampled(data) else None, "operation": "dataset"}
    operation = opts["operation"]
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

    Free memory the allocator keeps (d3codec.runtime keeps freed buffers) is given back first
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
BY_KIND: dict[str, dict[str, int]] = {}  # the same, per mutation family


def check_case(original: bytes, mutated: bytes, byte_mutation: bool, seconds: float = CASE_SECONDS,
               opts: dict | None = None) -> str | None:
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
        return traceback.format_exc(limit=6)
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
        if not all((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
                   for a, b in zip(got, want)):
            return "a damaged archive was read as different data"
    return None


def run(cases: int, seed: int, folder: Path, log=print, stop_at_first: bool = False) -> list[tuple[str, str, str]]:
    """Try ``cases`` mutations; returns the findings (seed archive, mutation kind, description)."""
    seeds = seed_archives(folder)
    for data in seeds.values():  # untimed: torch's one-time lazy imports (the first FlopCounterMode measurement
        read_like_a_user(data)   # of a network takes seconds) are not any case's doing
    rng = random.Random(seed)
    findings = []
    start = time.time()
    for case in range(1, cases + 1):
        name = rng.choice(sorted(seeds))
        original = seeds[name]
        draw = rng.random()
        kind = "byte" if draw < 0.3 else "structural" if draw < 0.75 else "method-layer"
        opts = None
        try:
            if kind == "method-layer":
                name, (mutated, opts) = "method-layer", method_layer(rng)
                original = mutated
                if rng.random() < 0.25:  # and its metadata mutated on top
                    mutated = structural(mutated, rng)
            else:
                mutated = byte_level(original, rng) if kind == "byte" else structural(original, rng)
                if rng.random() < 0.3:
                    sampled = _is_sampled(original)
                    opts = {"samples_per_class": rng.choice([None, 1, 3]) if sampled else None,
                            "operation": rng.choice(["dataset", "verify", "grid"])}
        except (TypeError, ValueError, OverflowError, RuntimeError) as e:  # the harness could not write it
            OUTCOMES["unwritable"] += 1
            log(f"case {case}: mutation not written ({type(e).__name__}: {e}); counted, not read")
            continue
        for _ in range(rng.choice([0, 0, 0, 1]) if kind != "method-layer" else 0):  # sometimes a second one
            try:
                mutated = structural(mutated, rng)
            except Exception:  # noqa: BLE001 - the first mutation left nothing to mutate further
                break
        before = dict(OUTCOMES)
        finding = check_case(original, mutated, kind == "byte", opts=opts)
        tally = BY_KIND.setdefault(kind, {"read": 0, "refused": 0, "found": 0})
        for key in ("read", "refused"):
            tally[key] += OUTCOMES[key] - before[key]
        tally["found"] += finding is not None
        if finding is not None:
            findings.append((name, kind, finding))
            (folder / f"finding-{seed}-{case}.d3").write_bytes(mutated)  # to reproduce: read it as the log says
            log(f"case {case} ({name}, {kind}, {opts and {k: v for k, v in opts.items() if k != 'other'}}): "
                f"{finding}")
            if stop_at_first:
                break
        if case % 1000 == 0:
            log(f"{case} cases tried, {len(findings)} found ({OUTCOMES['read']} read, {OUTCOMES['refused']} refused "
                f"with D3FormatError), {time.time() - start:.0f} s")
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
    p.add_argument("--memory-gib", type=float, default=4.0,
                   help="address space a case may add beyond what the process holds after loading (GiB)")
    args = p.parse_args()
    torch.set_num_threads(1)
    # hostile zero-size shapes are costed on the meta device; torch's note on each is noise in a long log
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
    seed_archives(Path(args.seeds_folder))
    limit_memory(args.memory_gib)
    findings = run(args.cases, args.seed, Path(args.seeds_folder))
    print(f"{args.cases} cases tried, {len(findings)} found ({OUTCOMES['read']} read, {OUTCOMES['refused']} refused "
          f"with D3FormatError, {OUTCOMES['unwritable']} mutations the harness could not write)")
    for kind, tally in sorted(BY_KIND.items()):
        print(f"  {kind}: {tally['read']} read, {tally['refused']} refused, {tally['found']} found")
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
