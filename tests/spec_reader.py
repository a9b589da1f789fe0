"""A .d3 reader written from spec/FORMAT.md alone: it imports nothing of d3codec.

It exists to show the specification is enough to read an archive and to reproduce what it expands
to: tests/test_spec_reader.py reads every test vector with it, compares the sections with the
vectors' inputs, reproduces every expansion (the noise bit for bit) and checks that it refuses
every negative vector. It uses the public zstandard and numpy packages and parses safetensors by its
own published layout (8-byte little-endian header length, JSON header, data). Section numbers below
are the specification's.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib

import numpy as np
import zstandard

MAGIC = bytes.fromhex("894433410D0A1A0A")  # §2
MAX_SECTIONS, MAX_TABLE = 256, 20_480  # §2, §3
MAX_JSON = 16 << 20  # §3, §4
NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*")  # §3
CODECS, CONTENTS = {0: "none", 1: "zstd"}, {0: "bytes", 1: "json", 2: "safetensors"}  # §3
SAFETENSORS_DTYPES = {
    "U8": np.uint8,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "BOOL": np.bool_,
}
SECTIONS = {  # §5.1: name → critical (every method may carry the labeller of §5.8)
    "pixel": {"meta": True, "images": True, "soft_labels": True, "schedule": True, "labeller": False},
    "d3": {"meta": True, "priors": True, "decoder": True, "prior_labels": True, "labeller": False},
    "d2m": {"meta": True, "generator": True, "teacher": False, "labeller": False},
}
GAMMA, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # §5.4


class SpecError(Exception):
    """The archive breaks a MUST of spec/FORMAT.md."""


# -- §3 JSON -------------------------------------------------------------------------------------


def _no_constant(token):
    raise SpecError(f"{token} is not JSON")


def _float(token):
    value = float(token)
    if not math.isfinite(value):
        raise SpecError(f"number {token} overflows binary64")
    return value


def _int(token):
    value = int(token)
    if not -(1 << 63) < value < 1 << 63:
        raise SpecError("integer outside ±2^63")
    return value


def _pairs(pairs):
    if len({k for k, _ in pairs}) != len(pairs):
        raise SpecError("a key appears twice in one object")
    return dict(pairs)


def parse_json(blob: bytes) -> dict:
    try:
        value = json.loads(
            blob.decode("utf-8"),
            parse_constant=_no_constant,
            parse_float=_float,
            parse_int=_int,
            object_pairs_hook=_pairs,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SpecError(f"invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise SpecError("JSON must be an object")
    return value


def parse_safetensors(blob: bytes) -> dict[str, np.ndarray]:
    """name → array (little-endian, row-major) of one safetensors blob."""
    if len(blob) < 8:
        raise SpecError("safetensors blob shorter than its header length")
    (n,) = struct.unpack_from("<Q", blob)
    if 8 + n > len(blob):
        raise SpecError("safetensors header runs past the blob")
    header = parse_json(blob[8 : 8 + n])
    data, out = blob[8 + n :], {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise SpecError(f"tensor {key!r}: unknown dtype")
        dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        if not 0 <= start <= end <= len(data) or end - start != count * dtype.itemsize:
            raise SpecError(f"tensor {key!r}: data offsets do not match its shape and dtype")
        out[key] = np.frombuffer(data[start:end], dtype=dtype).reshape(entry["shape"])
    return out


# -- §2, §3 the container -------------------------------------------------------------------------


def read(data: bytes) -> list[dict]:
    """Every section of an archive: name, critical, codec, content, value (bytes, dict, or dict of arrays).
    The result also carries the version as the attribute of its first element's ``version`` key."""
    if len(data) < 16 or data[:8] != MAGIC:
        raise SpecError("not a .d3 archive (magic)")
    major, minor, count, table_length = struct.unpack_from("<BBHI", data, 8)
    if major != 1 or not 1 <= count <= MAX_SECTIONS or table_length > MAX_TABLE:
        raise SpecError("unsupported version, section count or table length")
    table_end = 16 + table_length
    if len(data) < table_end + 4 or zlib.crc32(data[:table_end]) != struct.unpack_from("<I", data, table_end)[0]:
        raise SpecError("header CRC")
    entries, pos, offset, names = [], 16, table_end + 4, set()
    for _ in range(count):
        if pos >= table_end:
            raise SpecError("the table ends before its last entry")
        length = data[pos]
        raw_name = data[pos + 1 : pos + 1 + length]
        name = raw_name.decode("ascii", errors="replace")
        if not 1 <= length <= 64 or pos + 1 + length + 15 > table_end or not NAME.fullmatch(name) or name in names:
            raise SpecError(f"bad section name {name!r}")
        names.add(name)
        flags, codec, content, stored, raw, crc = struct.unpack_from("<BBBIII", data, pos + 1 + length)
        entries.append((name, bool(flags & 1), codec, content, offset, stored, raw, crc))
        offset += stored
        pos += 1 + length + 15
    if pos != table_end or offset != len(data):
        raise SpecError("the table does not fill T exactly, or the sizes do not add up to the file")
    sections = []
    for name, critical, codec, content, start, stored, raw, crc in entries:
        blob = data[start : start + stored]
        if zlib.crc32(blob) != crc:
            raise SpecError(f"section {name!r}: CRC")
        if codec not in CODECS or content not in CONTENTS:
            if critical:
                raise SpecError(f"critical section {name!r} of unknown codec or content")
            continue  # an unknown ancillary section is skipped
        if codec == 0 and stored != raw:
            raise SpecError(f"section {name!r}: a raw section's stored and raw lengths differ")
        if CONTENTS[content] == "json" and raw > MAX_JSON:
            raise SpecError(f"section {name!r}: JSON too large")
        if codec == 1:
            try:
                if zstandard.frame_content_size(blob) != raw:
                    raise SpecError(f"section {name!r}: zstd frame size differs from the raw length")
                blob = zstandard.ZstdDecompressor().decompress(blob, max_output_size=raw)
            except zstandard.ZstdError as e:
                raise SpecError(f"section {name!r}: zstd: {e}") from None
        if len(blob) != raw:
            raise SpecError(f"section {name!r}: raw length")
        kind = CONTENTS[content]
        value = parse_json(blob) if kind == "json" else parse_safetensors(blob) if kind == "safetensors" else blob
        sections.append(
            {
                "name": name,
                "critical": critical,
                "codec": CODECS[codec],
                "content": kind,
                "value": value,
                "version": (major, minor),
            }
        )
    return sections


# -- §5.1 metadata ------------------------------------------------------------------------------------


def integer(obj, key, lo, hi, default=None):
    if key not in obj and default is not None:
        return default
    v = obj.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise SpecError(f"{key} must be an integer {lo}..{hi}")
    return v


def number(obj, key, lo, hi):
    v = obj.get(key)
    if type(v) not in (int, float) or not lo <= v <= hi:
        raise SpecError(f"{key} must be a number {lo}..{hi}")
    return float(v)


def choice(obj, key, options, default=None):
    v = obj.get(key, default)
    if v not in options:
        raise SpecError(f"{key} must be one of {options}")
    return v


def check_meta(meta: dict) -> dict:
    if meta.get("format") != "d3" or meta.get("method") not in SECTIONS:
        raise SpecError("meta: format must be d3 and method one this reader knows")
    ds = meta.get("dataset")
    if not isinstance(ds, dict) or not isinstance(ds.get("name"), str):
        raise SpecError("meta: dataset must be an object with a name")
    classes, shape = ds.get("classes"), ds.get("image_shape")
    if not (
        isinstance(classes, list)
        and 1 <= len(classes) <= 100_000
        and all(isinstance(c, str) for c in classes)
        and len(set(classes)) == len(classes)
    ):
        raise SpecError("meta: dataset.classes")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(type(v) is int for v in shape)
        and shape[0] in (1, 3)
        and all(1 <= v <= 4096 for v in shape[1:])
    ):
        raise SpecError("meta: dataset.image_shape")
    for key, lo, hi in (("mean", -1000, 1000), ("std", 1e-6, 1000)):
        v = ds.get(key)
        if not (
            isinstance(v, list) and len(v) == shape[0] and all(type(x) in (int, float) and lo <= x <= hi for x in v)
        ):
            raise SpecError(f"meta: dataset.{key} must be {shape[0]} numbers from {lo} to {hi}")
    for key in ("params", "stats", "budget", "accounting", "software", "labeller"):
        if key in meta and not isinstance(meta[key], dict):
            raise SpecError(f"meta: {key} must be an object")
    for obj, key in (
        (meta.get("budget") or {}, "bytes"),
        (meta.get("accounting") or {}, "budget_bytes"),
        (meta.get("accounting") or {}, "bound_bytes"),
    ):
        if obj.get(key) is not None:
            integer(obj, key, 1, 1 << 62)
    if meta.get("seed") is not None:
        integer(meta, "seed", 0, (1 << 63) - 1)
    return meta


# -- §5.2 numerics and layers (computed in float64 from the float32 values the spec defines) ------------


def tensor(tensors, key, shape, dtypes):
    t = tensors.get(key)
    if t is None or tuple(t.shape) != tuple(shape) or t.dtype not in [np.dtype(d) for d in dtypes]:
        raise SpecError(f"tensor {key!r}: missing, or not {shape} of {dtypes}")
    return t


def weights(tensors, prefix, shapes, dtype):
    """§5.2 stored weights: name → float32 array, every stored value and scale finite, and the product too."""
    out = {}
    for name, shape in shapes.items():
        key = f"{prefix}{name}"
        if dtype == "int8" and len(shape) >= 2:
            q, s = tensor(tensors, key, shape, [np.int8]), tensor(tensors, key + ".scale", (shape[0],), [np.float16])
            out[name] = q.astype(np.float32) * s.astype(np.float32).reshape((-1,) + (1,) * (len(shape) - 1))
            stored = s
        else:
            out[name] = stored = tensor(tensors, key, shape, [np.float16]).astype(np.float32)
        if not (np.isfinite(stored).all() and np.isfinite(out[name]).all()):
            raise SpecError(f"tensor {key!r}: stored weights must be finite")
    return out


def weight_names(prefix, shapes, dtype):
    names = {f"{prefix}{n}" for n in shapes}
    return names | ({f"{prefix}{n}.scale" for n, s in shapes.items() if len(s) >= 2} if dtype == "int8" else set())


def exactly(tensors, names, section):
    if set(tensors) != set(names):
        raise SpecError(f"section {section!r} must hold exactly its tensors")


def probabilities(p, what):
    p = p.astype(np.float64)
    if p.size and (not np.isfinite(p).all() or (p < 0).any() or np.abs(p.sum(-1) - 1).max() > 0.01):
        raise SpecError(f"{what}: not probabilities")


def conv(x, w, b, pad):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    if ho < 1 or wo < 1:
        raise SpecError("a convolution's output would be empty")
    y = np.zeros((n, o, ho, wo))
    for u in range(k):
        for v in range(k):
            y += np.einsum("oc,nchw->nohw", w[:, :, u, v].astype(np.float64), xp[:, :, u : u + ho, v : v + wo])
    return y + b.astype(np.float64)[None, :, None, None]


def group_norm(x, groups, weight, bias):
    n, c, h, w = x.shape
    if c % groups or (c // groups) * h * w < 2:
        raise SpecError("GroupNorm: channels not a multiple of the groups, or a group of one value")
    g = x.reshape(n, groups, -1)
    y = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)
    return (
        y.reshape(n, c, h, w) * weight.astype(np.float64)[None, :, None, None]
        + bias.astype(np.float64)[None, :, None, None]
    )


def leaky(x):
    return np.maximum(x, 0.2 * x)


def pool(x, kind):
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        raise SpecError("pooling a map smaller than 2 × 2")
    blocks = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    return blocks.mean((3, 5)) if kind == "avg" else blocks.max((3, 5))


def up2(x):
    return x.repeat(2, axis=2).repeat(2, axis=3)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def geometry(h, w):
    u = max(0, int(math.floor(math.log2(max(min(h, w), 4) / 4))))
    return u, -(-h // 2**u), -(-w // 2**u)


# -- §5.3 networks: parameter shapes, and forward passes ------------------------------------------------


def decoder_widths(arch, width, u):
    """c_0 … c_u of §5.3's Decoder: all W (uniform), or c_{i+1} = max(4, ⌊c_i / 2⌋) (tapered)."""
    if arch == "uniform":
        if not (width in (1, 2, 3) or width % 4 == 0):
            raise SpecError("decoder width must be 1, 2, 3 or a multiple of 4")
        return [width] * (u + 1)
    out = [width]
    for _ in range(u):
        out.append(max(4, out[-1] // 2))
    return out


def decoder_shapes(z, shape, width, arch="uniform"):
    c, h, w = shape
    u, h0, w0 = geometry(h, w)
    ch = decoder_widths(arch, width, u)
    s = {"fc.weight": (width * h0 * w0, z), "fc.bias": (width * h0 * w0,)}
    for i in range(u):
        s.update(
            {
                f"blocks.{4 * i + 1}.weight": (ch[i + 1], ch[i], 3, 3),
                f"blocks.{4 * i + 1}.bias": (ch[i + 1],),
                f"blocks.{4 * i + 2}.weight": (ch[i + 1],),
                f"blocks.{4 * i + 2}.bias": (ch[i + 1],),
            }
        )
    s.update({"out.weight": (c, ch[u], 3, 3), "out.bias": (c,)})
    return s


def decoder_forward(p, z, shape, width, arch="uniform"):
    c, h, w = shape
    u, h0, w0 = geometry(h, w)
    ch = decoder_widths(arch, width, u)
    x = leaky(z @ p["fc.weight"].T.astype(np.float64) + p["fc.bias"]).reshape(-1, width, h0, w0)
    for i in range(u):
        groups = min(4, ch[i + 1]) if arch == "uniform" else math.gcd(4, ch[i + 1])
        x = conv(up2(x), p[f"blocks.{4 * i + 1}.weight"], p[f"blocks.{4 * i + 1}.bias"], 1)
        x = leaky(group_norm(x, groups, p[f"blocks.{4 * i + 2}.weight"], p[f"blocks.{4 * i + 2}.bias"]))
    return sigmoid(conv(x, p["out.weight"], p["out.bias"], 1))[:, :, :h, :w]


def generator_layout(arch, k, z, e, width, shape):
    """(parameter shapes, the stages as (conv name, norm name, in, out, upsample first))."""
    c, h, w = shape
    u, h0, w0 = geometry(h, w)
    s = {"embedding.weight": (k, e), "fc.weight": (width * h0 * w0, z + e), "fc.bias": (width * h0 * w0,)}
    stages, ch, base = [], width, 1
    if arch == "upconv-v2":
        stages.append(("blocks.0", "blocks.1", width, 4 * width, False))
        ch, base = 4 * width, 4
    for i in range(u):
        out = max(4, ch // 2)
        stages.append((f"blocks.{4 * i + base}", f"blocks.{4 * i + base + 1}", ch, out, True))
        ch = out
    for conv_name, norm_name, a, b, _ in stages:
        s.update(
            {
                f"{conv_name}.weight": (b, a, 3, 3),
                f"{conv_name}.bias": (b,),
                f"{norm_name}.weight": (b,),
                f"{norm_name}.bias": (b,),
            }
        )
    s.update({"out.weight": (c, ch, 3, 3), "out.bias": (c,)})
    return s, stages


def generator_forward(p, stages, noise, labels, width, shape):
    c, h, w = shape
    _, h0, w0 = geometry(h, w)
    x = np.concatenate([noise, p["embedding.weight"][labels].astype(np.float64)], 1)
    x = leaky(x @ p["fc.weight"].T.astype(np.float64) + p["fc.bias"]).reshape(-1, width, h0, w0)
    for conv_name, norm_name, _, b, upsample in stages:
        x = conv(up2(x) if upsample else x, p[f"{conv_name}.weight"], p[f"{conv_name}.bias"], 1)
        x = leaky(group_norm(x, math.gcd(4, b), p[f"{norm_name}.weight"], p[f"{norm_name}.bias"]))
    return sigmoid(conv(x, p["out.weight"], p["out.bias"], 1))[:, :, :h, :w]


def convnet_shapes(c, k, h, w, width):
    if h != w or h < 8:
        raise SpecError("ConvNet-3 needs square images of at least 8 × 8")
    s_ = h + 4 if h == 28 else h
    shapes = {}
    for i in range(3):
        shapes.update(
            {
                f"features.{4 * i}.weight": (width, c if i == 0 else width, 3, 3),
                f"features.{4 * i}.bias": (width,),
                f"features.{4 * i + 1}.weight": (width,),
                f"features.{4 * i + 1}.bias": (width,),
            }
        )
    shapes.update({"classifier.weight": (k, width * (s_ // 8) ** 2), "classifier.bias": (k,)})
    return shapes


def convnet_forward(p, x, width):
    h = x.shape[2]
    for i in range(3):
        x = conv(x, p[f"features.{4 * i}.weight"], p[f"features.{4 * i}.bias"], 3 if i == 0 and h == 28 else 1)
        x = pool(
            np.maximum(group_norm(x, width, p[f"features.{4 * i + 1}.weight"], p[f"features.{4 * i + 1}.bias"]), 0),
            "avg",
        )
    return x.reshape(len(x), -1) @ p["classifier.weight"].T.astype(np.float64) + p["classifier.bias"]


def lenet_shapes(c, k, h, w):
    if h != w:
        raise SpecError("LeNet needs square images")
    pad = 2 if h == 28 else 0
    q = ((h + 2 * pad - 4) // 2 - 4) // 2
    if q < 1:
        raise SpecError("LeNet needs images of at least 16 × 16")
    return {
        "features.0.weight": (6, c, 5, 5),
        "features.0.bias": (6,),
        "features.3.weight": (16, 6, 5, 5),
        "features.3.bias": (16,),
        "classifier.0.weight": (120, 16 * q * q),
        "classifier.0.bias": (120,),
        "classifier.2.weight": (84, 120),
        "classifier.2.bias": (84,),
        "classifier.4.weight": (k, 84),
        "classifier.4.bias": (k,),
    }


# -- §5.4 the sampling noise of version 1.1 ----------------------------------------------------------------


def mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(MIX1)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(MIX2)
        return x ^ (x >> np.uint64(31))


def fold(h, v):
    with np.errstate(over="ignore"):
        return mix((np.asarray(h, dtype=np.uint64) ^ np.asarray(v, dtype=np.uint64)) + np.uint64(GAMMA))


def key(*values):
    h = np.zeros(1, dtype=np.uint64)
    for v in values:
        h = fold(h, v)
    return h


def uniform(word):
    return ((word >> np.uint64(11)).astype(np.int64) - (1 << 52)).astype(np.float64) * 2.0**-52


def ln(s):
    m, e = np.frexp(s)
    small = m < float.fromhex("0x1.6a09e667f3bcdp-1")
    m, e = np.where(small, 2 * m, m), np.where(small, e - 1, e).astype(np.float64)
    f = (m - 1) / (m + 1)
    g, p = f * f, np.full(f.shape, 1 / 25)
    for k in range(11, -1, -1):
        p = p * g + 1 / (2 * k + 1)
    q = f * p
    return e * float.fromhex("0x1.62e42fefa39efp-1") + (q + q)


def normals(keys: np.ndarray) -> np.ndarray:
    out = np.zeros(keys.shape, dtype=np.float32)
    todo = np.ones(keys.shape, dtype=bool)
    for t in range(64):
        h = fold(keys, t)
        v1, v2 = uniform(fold(h, 0)), uniform(fold(h, 1))
        s = v1 * v1 + v2 * v2
        ok = todo & (s > 0) & (s < 1)
        safe = np.where(ok, s, 0.5)
        value = v1 * np.sqrt((-2 * ln(safe)) / safe)
        out[ok] = value[ok].astype(np.float32)
        todo &= ~ok
        if not todo.any():
            break
    return out


def noise(seed, stream, a_count, n, z):
    """(A, N, Z) float32, value [a, j, d] keyed by hash(seed, stream, a, j, d)."""
    a = np.arange(a_count, dtype=np.uint64)[:, None, None]
    j = np.arange(n, dtype=np.uint64)[None, :, None]
    d = np.arange(z, dtype=np.uint64)[None, None, :]
    keys = fold(fold(fold(key(seed, stream), a), j), d)
    return normals(np.broadcast_to(keys, (a_count, n, z)).copy())


def order(seed, stream, a, size):
    return np.argsort(key(seed, stream, a, np.arange(size, dtype=np.uint64)), kind="stable")


# -- §5 the archive layer: check, decode, expand ---------------------------------------------------------------


def read_archive(data: bytes, samples_per_class: int | None = None, seed: int = 0) -> dict:
    """A d3 archive's expansion: labels (N,), images (N, C, H, W) float64, soft labels (N, K) or None, the
    labeller's soft labels of the images (§5.8) or None, the decode budget's figures (§4), and for sampled
    methods the noise (float32) and, for d3, each sample's prior. Raises SpecError for anything §3 to §5 refuse."""
    sections = read(data)
    if not sections or sections[0]["name"] != "meta" or sections[0]["content"] != "json":
        raise SpecError("the first section must be the JSON meta")
    if not sections[0]["critical"]:
        raise SpecError("meta must be critical")
    meta = check_meta(sections[0]["value"])
    version = sections[0]["version"]
    by_name = {s["name"]: s for s in sections}
    known = SECTIONS[meta["method"]]
    for s in sections:
        if s["name"] in known and s["critical"] != known[s["name"]]:
            raise SpecError(f"section {s['name']!r} carries the wrong critical flag")
        if s["name"] not in known and s["critical"]:
            raise SpecError(f"unknown critical section {s['name']!r}")
    ds = meta["dataset"]
    shape, k = tuple(ds["image_shape"]), len(ds["classes"])
    tensors = {name: s["value"] for name, s in by_name.items() if s["content"] == "safetensors"}
    mean = np.array(ds["mean"], dtype=np.float32)[None, :, None, None]
    std = np.array(ds["std"], dtype=np.float32)[None, :, None, None]
    cap = draw_cap(k, shape, len(data))
    labeller = read_labeller(meta, tensors, shape, k)
    if meta["method"] == "pixel":
        if samples_per_class is not None:
            raise SpecError("pixel archives store their images")
        out = read_pixel(meta, tensors, shape, k)
    elif meta["method"] == "d3":
        out = read_d3(meta, tensors, shape, k, version, samples_per_class, seed, cap)
    else:
        out = read_d2m(meta, tensors, shape, k, version, samples_per_class, seed, mean, std, cap)
    out["labeller"] = None if labeller is None else label(*labeller, out["images"], mean, std)
    out["budget"] = figures(meta, tensors, shape, k, cap, samples_per_class)
    return out


def draw_cap(k, shape, file_bytes):
    """§4: the most images per class a sampled archive draws by default, max(1, ⌈64 · B / (4 · K · C · H · W)⌉)."""
    return max(1, -(-64 * file_bytes // (4 * k * math.prod(shape))))


def values(shapes):
    return sum(math.prod(s) for s in shapes.values())


def figures(meta, tensors, shape, k, cap, samples_per_class):
    """§4, the reference reader's figures from the declared shapes alone: the default draw (images per class:
    d3 per group, d2m one, pixel None), the output bytes of this expansion, and the values decoded: the
    method's networks and tables, and the labeller's (None without one)."""
    c, h, w = shape
    p, draw, decoded, noise_values = meta.get("params") or {}, None, 0, 0
    if meta["method"] == "pixel":
        n, soft = len(tensors["images"]["labels"]), "soft_labels" in tensors
        if p.get("objective") == "bptt" and p["init"] == "fixed":
            decoded += values(lenet_shapes(c, k, h, w) if p["network"] == "lenet" else convnet_shapes(c, k, h, w, 128))
    elif meta["method"] == "d3":
        draw, n, soft = [], 0, True
        for g in p["groups"]:
            kg, priors, z = g["classes"][1] - g["classes"][0], g["priors_per_class"], g["latent_dim"]
            draw.append(min(priors, cap))
            n += kg * (samples_per_class or draw[-1])
            noise_values = max(noise_values, kg * (samples_per_class or draw[-1]) * z)  # one group at a time
            soft = soft and g["soft_labels"]
            labels = kg * priors * (3 * g["label_top_k"] + 1 if "label_top_k" in g else kg) if g["soft_labels"] else 0
            decoded += values(decoder_shapes(z, shape, g["decoder_width"], g.get("decoder_architecture", "uniform")))
            decoded += kg * priors * (2 * z + 32) + labels  # priors, and 32 values a prior to order them
    else:
        draw, soft = [min(p["samples_per_class"], cap)], "teacher_width" in p
        n = k * (samples_per_class or draw[0])
        noise_values = n * p["noise_dim"]
        decoded += values(
            generator_layout(p["architecture"], k, p["noise_dim"], p["embed_dim"], p["generator_width"], shape)[0]
        )
        decoded += values(convnet_shapes(c, k, h, w, p["teacher_width"])) if soft else 0
    labeller = values(convnet_shapes(c, k, h, w, meta["labeller"]["width"])) if "labeller" in meta else None
    output = n * (4 * c * h * w + 8) + (4 * n * k if soft else 0) + 4 * noise_values
    return {"default_draw": draw, "output_bytes": output, "decoded_values": decoded, "labeller_values": labeller}


def read_labeller(meta, tensors, shape, k):
    """§5.8: (parameters, width, temperature) of the stored labeller, or None."""
    described = meta.get("labeller")
    if described is None:
        if "labeller" in tensors:
            raise SpecError("a labeller section without meta.labeller")
        return None
    choice(described, "network", ("convnet3",))
    width, tau = integer(described, "width", 1, 4096), number(described, "temperature", 1e-3, 1e3)
    dtype = choice(described, "dtype", ("int8", "float16"))
    if "labeller" not in tensors:
        raise SpecError("meta.labeller without a labeller section")
    shapes = convnet_shapes(shape[0], k, shape[1], shape[2], width)
    exactly(tensors["labeller"], weight_names("", shapes, dtype), "labeller")
    return weights(tensors["labeller"], "", shapes, dtype), width, tau


def label(params, width, tau, images, mean, std):
    """softmax(ConvNet-3(x̂) / τ), x̂ the images normalised with the dataset's mean and std (§5.7, §5.8)."""
    logits = convnet_forward(params, (images - mean) / std, width) / tau
    soft = np.exp(logits - logits.max(1, keepdims=True))
    return soft / soft.sum(1, keepdims=True)


def read_pixel(meta, tensors, shape, k):
    if "images" not in tensors:
        raise SpecError("pixel archives need the images section")
    t = tensors["images"]
    codes = t.get("images")
    kind, f, mask = formation(meta.get("params") or {}, shape)
    stored = (shape[0], shape[1] // f, shape[2] // f)
    if codes is None or codes.ndim != 4 or tuple(codes.shape[1:]) != stored or codes.shape[0] < 1:
        raise SpecError("images: (N, C, H/f, W/f) with N ≥ 1")
    n = codes.shape[0]
    exactly(t, {"images", "labels"} | ({"range"} if codes.dtype == np.uint8 else set()), "images")
    labels = tensor(t, "labels", (n,), [np.uint8, np.int32]).astype(np.int64)
    if (labels < 0).any() or (labels >= k).any():
        raise SpecError("labels out of range")
    if codes.dtype == np.uint8:
        rng = tensor(t, "range", (k, 2), [np.float32])
        if not np.isfinite(rng).all():
            raise SpecError("range must be finite")
        lo, hi = rng[labels, 0][:, None, None, None], rng[labels, 1][:, None, None, None]
        images = lo + (codes.astype(np.float32) / np.float32(255)) * (hi - lo)  # §5.2, in float32
    elif codes.dtype in (np.float16, np.float32):
        images = codes.astype(np.float32)
    else:
        raise SpecError("images must be U8, F16 or F32")
    if not np.isfinite(images).all():
        raise SpecError("images must be finite")
    images = form(images, kind, shape, mask)
    with np.errstate(over="ignore"):
        if not np.isfinite(images.astype(np.float32)).all():
            raise SpecError("decoded images must be finite in float32")
    soft = None
    if "soft_labels" in tensors:
        exactly(tensors["soft_labels"], {"soft_labels"}, "soft_labels")
        soft = tensor(tensors["soft_labels"], "soft_labels", (n, k), [np.float16, np.float32]).astype(np.float32)
        probabilities(soft, "soft_labels")
    params = meta.get("params") or {}
    schedule = None
    if params.get("objective") == "bptt":
        schedule = read_schedule(params, tensors, shape, k, labels)
    elif "schedule" in tensors:
        raise SpecError("a schedule section belongs to objective bptt")
    return {"labels": labels, "images": images.astype(np.float64), "soft_labels": soft, "schedule": schedule}


def formation(params, shape):
    """§5.5: (kind, factor, mask) of meta.params.formation; absent: pixels. ``mask``: None, or for a dct with a
    coefficient mask the flat row-major H·W positions of each channel's set bits, (C, ⌊H/f⌋·⌊W/f⌋)."""
    if "formation" not in params:
        return "pixels", 1, None
    value = params["formation"]
    if not isinstance(value, dict) or set(value) not in ({"kind", "factor"}, {"kind", "factor", "mask"}):
        raise SpecError("formation: an object of kind and factor (and, for dct, mask)")
    kind = choice(value, "kind", ("pixels", "lowres", "dct"))
    f = integer(value, "factor", 1, 16)
    if (
        (kind == "pixels") != (f == 1)
        or (kind == "lowres" and (shape[1] % f or shape[2] % f))
        or shape[1] // f < 1
        or shape[2] // f < 1
    ):
        raise SpecError(
            "formation: factor 1 for pixels, 2 to 16 otherwise, leaving codes of at least 1 × 1, "
            "dividing the sides for lowres"
        )
    if "mask" not in value:
        return kind, f, None
    if kind != "dct":
        raise SpecError("formation: only dct takes a mask")
    return kind, f, dct_mask(value["mask"], shape, f)


def dct_mask(mask, shape, f):
    """§5.5: a dct formation's mask, one string per channel of 2·⌈H·W/8⌉ lowercase hex digits: H·W bits, row-major,
    the first the most significant bit of the first byte, the padding 0, exactly ⌊H/f⌋·⌊W/f⌋ set. Returns the
    set positions of each channel in ascending order, (C, ⌊H/f⌋·⌊W/f⌋) int64."""
    c, h, w = shape
    bits_, digits, keep = h * w, 2 * ((h * w + 7) // 8), (h // f) * (w // f)
    if not isinstance(mask, list) or len(mask) != c:
        raise SpecError(f"formation: mask must be a list of {c} strings, one per channel")
    rows = []
    for text in mask:
        if not isinstance(text, str) or len(text) != digits or any(ch not in "0123456789abcdef" for ch in text):
            raise SpecError(f"formation: a mask is a string of {digits} lowercase hex digits")
        bits = []
        for i in range(0, digits, 2):  # each byte, its most significant bit first
            byte = int(text[i : i + 2], 16)
            bits += [(byte >> (7 - b)) & 1 for b in range(8)]
        if any(bits[bits_:]):
            raise SpecError("formation: a mask's padding bits (past H·W) must be 0")
        positions = [p for p in range(bits_) if bits[p]]
        if len(positions) != keep:
            raise SpecError(f"formation: a mask sets exactly ⌊H/f⌋·⌊W/f⌋ = {keep} bits")
        rows.append(positions)
    return np.array(rows, dtype=np.int64).reshape(c, keep)


def form(codes, kind, shape, mask=None):
    """§5.5: float32 codes (N, C, h, w) → images (N, C, H, W): lowres in float32, dct in float64 (a higher
    precision than the reference's float32 products, which §5.2 allows). With a mask, code (a, b) of channel c
    is the coefficient at the (a·w + b)-th set bit of channel c's mask, every other one 0, and the DCT matrices
    are the full H × H and W × W."""
    _, h, w = shape
    if kind == "pixels":
        return codes.astype(np.float64)
    if kind == "dct":
        if mask is not None:
            n, c = codes.shape[:2]
            full = np.zeros((n, c, h * w))
            for ch in range(c):
                full[:, ch, mask[ch]] = codes[:, ch].reshape(n, -1)  # row-major (a, b) → the (a·w + b)-th set bit
            codes = full.reshape(n, c, h, w)
        bh, bw = dct_basis(h, codes.shape[2]), dct_basis(w, codes.shape[3])
        return np.einsum("ki,nckl,lj->ncij", bh.astype(np.float64), codes.astype(np.float64), bw.astype(np.float64))
    r0, r1, a0, a1 = lowres_taps(codes.shape[2], h // codes.shape[2])
    c0, c1, b0, b1 = lowres_taps(codes.shape[3], w // codes.shape[3])
    x = lambda r, c: codes[:, :, r][:, :, :, c]  # noqa: E731
    weight = lambda a, b: (a[:, None] * b[None, :]).astype(np.float32)  # noqa: E731, the product in float32
    out = (
        x(r0, c0) * weight(a0, b0)
        + x(r0, c1) * weight(a0, b1)
        + x(r1, c0) * weight(a1, b0)
        + x(r1, c1) * weight(a1, b1)
    )
    return out.astype(np.float64)


def lowres_taps(n, f):
    """§5.5 lowres along one axis of n codes and m = f·n pixels: (i0, i1, λ0, λ1) for each pixel, λ float32."""
    r = np.float64(np.float32(1 / f))
    s = np.maximum(0, r * (np.arange(n * f) + 0.5) - 0.5).astype(np.float32)  # exact in binary64, rounded once
    i0 = np.floor(s).astype(np.int64)
    i1 = np.where(i0 < n - 1, i0 + 1, i0)
    l1 = s - i0.astype(np.float32)
    return i0, i1, np.float32(1) - l1, l1


def dct_basis(n, keep):
    """§5.5: B[k, j] computed in binary64 as written, rounded to binary32, (keep, n)."""
    b = np.empty((keep, n))
    for k in range(keep):
        for j in range(n):
            v = math.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2 / n)
            b[k, j] = v / math.sqrt(2) if k == 0 else v
    return b.astype(np.float32)


def read_schedule(params, tensors, shape, k, labels):
    network = choice(params, "network", ("lenet", "convnet3"))
    init = choice(params, "init", ("fixed", "random"))
    s, e = integer(params, "inner_steps", 1, 100_000), integer(params, "inner_epochs", 1, 100_000)
    if s * e > 100_000 or "schedule" not in tensors:
        raise SpecError("a bptt archive needs a schedule of at most 100 000 steps")
    c, h, w = shape
    shapes = lenet_shapes(c, k, h, w) if network == "lenet" else convnet_shapes(c, k, h, w, 128)
    t = tensors["schedule"]
    exactly(t, {"step_sizes"} | ({f"theta0.{n}" for n in shapes} if init == "fixed" else set()), "schedule")
    steps = tensor(t, "step_sizes", (s * e,), [np.float32, np.float16]).astype(np.float32)
    if not (np.isfinite(steps).all() and (steps > 0).all()):
        raise SpecError("step sizes must be finite and positive")
    theta0 = None
    if init == "fixed":
        theta0 = {
            n: tensor(t, f"theta0.{n}", sh, [np.float16, np.float32]).astype(np.float32) for n, sh in shapes.items()
        }
        if not all(np.isfinite(v).all() for v in theta0.values()):
            raise SpecError("θ₀ must be finite")
    counts = np.bincount(labels, minlength=k)
    if (counts == 0).any() or (counts % s).any():
        raise SpecError("every class needs a positive multiple of the steps")
    return {"network": network, "init": init, "steps": s, "epochs": e, "step_sizes": steps, "theta0": theta0}


def read_d3(meta, tensors, shape, k, version, samples_per_class, seed, cap):
    groups = (meta.get("params") or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        raise SpecError("d3: params.groups must be a non-empty list")
    plans, expected = [], 0
    for g in groups:
        if not isinstance(g, dict):
            raise SpecError("d3: a group must be an object")
        bounds = g.get("classes")
        if not (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(type(v) is int for v in bounds)
            and bounds[0] == expected
            and expected < bounds[1] <= k
        ):
            raise SpecError("d3: groups must follow one another from class 0")
        plans.append(
            {
                "start": bounds[0],
                "stop": bounds[1],
                "z": integer(g, "latent_dim", 1, 4096),
                "p": integer(g, "priors_per_class", 1, 1_000_000),
                "w": integer(g, "decoder_width", 1, 4096),
                "arch": choice(g, "decoder_architecture", ("uniform", "tapered"), "uniform"),
                "decoder_dtype": choice(g, "decoder_dtype", ("int8", "float16")),
                "prior_dtype": choice(g, "prior_dtype", ("float16", "int8"), "float16"),
                "soft": g.get("soft_labels"),
                "top_k": integer(g, "label_top_k", 1, min(bounds[1] - bounds[0] - 1, 32767), None)
                if "label_top_k" in g
                else None,
            }
        )
        if not isinstance(plans[-1]["soft"], bool):
            raise SpecError("d3: soft_labels must be a boolean")
        expected = bounds[1]
    if expected != k:
        raise SpecError("d3: the groups must cover every class")
    labelled = [i for i, g in enumerate(plans) if g["soft"]]
    if "priors" not in tensors or "decoder" not in tensors or bool(labelled) != ("prior_labels" in tensors):
        raise SpecError("d3: priors, decoder, and prior_labels exactly when some group has soft labels")
    shapes = [decoder_shapes(g["z"], shape, g["w"], g["arch"]) for g in plans]
    exactly(
        tensors["priors"],
        set().union(
            *(weight_names(f"g{i}.", {"mean": (1, 1), "logvar": (1, 1)}, g["prior_dtype"]) for i, g in enumerate(plans))
        ),
        "priors",
    )
    exactly(
        tensors["decoder"],
        set().union(*(weight_names(f"g{i}.", shapes[i], g["decoder_dtype"]) for i, g in enumerate(plans))),
        "decoder",
    )
    if labelled:
        exactly(
            tensors["prior_labels"],
            set().union(
                *({f"g{i}"} if plans[i]["top_k"] is None else {f"g{i}.values", f"g{i}.indices"} for i in labelled)
            ),
            "prior_labels",
        )
    out = {"labels": [], "images": [], "soft_labels": [], "noise": [], "priors": []}
    every_soft = len(labelled) == len(plans)
    for i, g in enumerate(plans):
        kg, p, z = g["stop"] - g["start"], g["p"], g["z"]
        priors = {}
        for name in ("mean", "logvar"):
            key_ = f"g{i}.{name}"
            if g["prior_dtype"] == "int8":
                q = tensor(tensors["priors"], key_, (kg, p, z), [np.int8])
                scale = tensor(tensors["priors"], key_ + ".scale", (z,), [np.float16])
                priors[name] = q.astype(np.float32) * scale.astype(np.float32)  # §5.2, along the last dimension
            else:
                priors[name] = tensor(tensors["priors"], key_, (kg, p, z), [np.float16]).astype(np.float32)
            if not np.isfinite(priors[name]).all():
                raise SpecError("priors must be finite")
        decoder = weights(tensors["decoder"], f"g{i}.", shapes[i], g["decoder_dtype"])
        lab = None
        if g["soft"]:
            if g["top_k"] is None:
                lab = tensor(tensors["prior_labels"], f"g{i}", (kg, p, kg), [np.float16]).astype(np.float32)
                probabilities(lab, "prior_labels")
            else:  # the top k of each row, the rest spread evenly
                t = g["top_k"]
                values = tensor(tensors["prior_labels"], f"g{i}.values", (kg, p, t), [np.float16]).astype(np.float32)
                index = tensor(tensors["prior_labels"], f"g{i}.indices", (kg, p, t), [np.int16]).astype(np.int64)
                if not np.isfinite(values).all() or (values < 0).any() or (values.sum(-1) > 1.01).any():
                    raise SpecError("d3: top-k values must be finite, at least 0, and sum to at most 1")
                if (index < 0).any() or (index >= kg).any() or (np.diff(np.sort(index, -1), axis=-1) == 0).any():
                    raise SpecError("d3: top-k indices must be distinct classes of the group")
                rest = np.maximum(np.float32(0), (np.float32(1) - values.sum(-1, keepdims=True)) / np.float32(kg - t))
                lab = np.repeat(rest, kg, axis=-1).astype(np.float32)
                np.put_along_axis(lab, index, values, axis=-1)
        n = samples_per_class or min(p, cap)  # §4: the default draw
        if version < (1, 1):
            raise SpecError("1.0 samples come from torch's generator, which this document does not define")
        which = np.stack([order(seed, 1, a, p) for a in range(kg)])[:, np.arange(n) % p]  # (K_g, N)
        eps = noise(seed, 2, kg, n, z)  # (K_g, N, Z) float32
        mu = np.take_along_axis(priors["mean"], which[:, :, None], 1)
        lv = np.take_along_axis(priors["logvar"], which[:, :, None], 1)
        latents = mu.astype(np.float64) + np.exp(lv.astype(np.float64) / 2) * eps
        out["images"].append(decoder_forward(decoder, latents.reshape(kg * n, z), shape, g["w"], g["arch"]))
        out["labels"].append(np.repeat(np.arange(g["start"], g["stop"]), n))
        out["noise"].append(eps.reshape(kg * n, z))
        out["priors"].append(which.reshape(-1))
        if every_soft:
            rows = np.take_along_axis(lab, which[:, :, None], 1).reshape(kg * n, kg)
            full = np.zeros((kg * n, k))
            full[:, g["start"] : g["stop"]] = rows
            out["soft_labels"].append(full)
    images = np.concatenate(out["images"])
    if not np.isfinite(images).all():
        raise SpecError("decoded images must be finite")
    return {
        "labels": np.concatenate(out["labels"]),
        "images": images,
        "soft_labels": np.concatenate(out["soft_labels"]) if every_soft else None,
        "noise": out["noise"],
        "priors": np.concatenate(out["priors"]),
    }


def read_d2m(meta, tensors, shape, k, version, samples_per_class, seed, mean, std, cap):
    p = meta.get("params")
    if not isinstance(p, dict):
        raise SpecError("d2m: params must be an object")
    arch = choice(p, "architecture", ("upconv-v1", "upconv-v2"))
    z, e = integer(p, "noise_dim", 1, 4096), integer(p, "embed_dim", 1, 4096)
    width, dtype = integer(p, "generator_width", 4, 4096), choice(p, "weight_dtype", ("int8", "float16"))
    default = integer(p, "samples_per_class", 1, 10_000_000)
    declared = "teacher_width" in p or "label_temperature" in p
    if "generator" not in tensors or declared != ("teacher" in tensors):
        raise SpecError("d2m: a generator, and a teacher exactly when teacher_width is declared")
    shapes, stages = generator_layout(arch, k, z, e, width, shape)
    exactly(tensors["generator"], weight_names("", shapes, dtype), "generator")
    gen = weights(tensors["generator"], "", shapes, dtype)
    teacher = None
    if declared:
        tw, tau = integer(p, "teacher_width", 1, 4096), number(p, "label_temperature", 1e-3, 1e3)
        c, h, w = shape
        t_shapes = convnet_shapes(c, k, h, w, tw)
        exactly(tensors["teacher"], weight_names("", t_shapes, dtype), "teacher")
        teacher = (weights(tensors["teacher"], "", t_shapes, dtype), tw, tau)
    if version < (1, 1):
        raise SpecError("1.0 samples come from torch's generator, which this document does not define")
    n = samples_per_class or min(default, cap)  # §4: the default draw
    eps = noise(seed, 3, k, n, z).reshape(k * n, z)
    labels = np.repeat(np.arange(k), n)
    images = generator_forward(gen, stages, eps.astype(np.float64), labels, width, shape)
    if not np.isfinite(images).all():
        raise SpecError("decoded images must be finite")
    soft = None if teacher is None else label(*teacher, images, mean, std)
    return {"labels": labels, "images": images, "soft_labels": soft, "noise": [eps]}
