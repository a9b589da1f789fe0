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
their expansion as d3codec's reference reader makes it (``--make`` writes it; the tests check that
d3codec and tests/spec_reader.py both reproduce it).
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import torch
import zstandard

from d3codec.container import FIXED_HEADER, Content, D3Reader, Section, encode_archive

HERE = Path(__file__).resolve().parent
DTYPES = {"U8": torch.uint8, "I8": torch.int8, "I32": torch.int32, "I64": torch.int64, "F16": torch.float16,
          "F32": torch.float32}
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
        tensors = {k: torch.tensor(t["values"], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
                   for k, t in spec["tensors"].items()}
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
        return bytes(out[:len(out) - damage["truncate"]])
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
                same, word = decoded_sections(stored) == decoded_sections(data), f"same contents (zstd {zstd_library()})"
            bad += not same
            print(f"{vector['file']}: {word if same else 'DIFFERENT'}")
        else:
            if not byte_exact_here(vector):
                print(f"{vector['file']}: zstd {zstd_library()} is not the vectors' {recorded_zstd_library()}; "
                      "update zstd_library in vectors.json if you mean to rewrite them with it")
                return 1
            path.write_bytes(data)
            print(f"wrote {vector['file']} ({len(data)} bytes)")
    return 1 if bad else 0


# -- --make: the generated vectors and every expansion --------------------------------------------------------

def tensor_spec(t: torch.Tensor) -> dict:
    return {"dtype": NAMES[t.dtype], "shape": list(t.shape), "values": t.flatten().tolist()}


def tensors_section(name: str, tensors: dict, critical: bool = True, codec: str = "zstd") -> dict:
    return {"name": name, "critical": critical, "content": "safetensors", "codec": codec,
            "tensors": {k: tensor_spec(v) for k, v in sorted(tensors.items())}}


def json_section(obj: dict, codec: str = "zstd", critical: bool = True) -> dict:
    return {"name": "meta", "critical": critical, "content": "json", "codec": codec, "json": obj}


def dataset(classes: list[str], shape: list[int]) -> dict:
    return {"name": "vector", "classes": classes, "image_shape": shape, "mean": [0.5] * shape[0],
            "std": [0.25] * shape[0]}


def expansion(data: bytes, samples_per_class: int | None, seed: int) -> dict:
    """What d3codec's reference reader makes of a vector: images, labels, soft labels, and for sampled
    archives the noise and priors of the draw."""
    from d3codec.archive import open_archive
    from d3codec.dataset import decode_archive
    from d3codec.limits import DEFAULT_LIMITS

    reader, meta = open_archive(data)
    with reader:
        images, labels, soft, schedule, sampler = decode_archive(reader, meta, samples_per_class, seed, "cpu",
                                                                 DEFAULT_LIMITS)
    out = {"samples_per_class": samples_per_class, "seed": seed, "labels": labels.tolist(),
           "images": tensor_spec(images.float()), "soft_labels": tensor_spec(soft.float()) if soft is not None else None}
    if sampler is not None and meta["method"] == "d3":
        noise, priors = [], []
        for index, sg in enumerate(sampler.groups):
            which, eps = sampler.group_noise(index, samples_per_class or sg.plan.priors_per_class, seed)
            noise.append(tensor_spec(eps.reshape(-1, eps.shape[-1])))
            priors += which.flatten().tolist()
        out.update(noise=noise, priors=priors)
    elif sampler is not None:
        out["noise"] = [tensor_spec(sampler.noise(samples_per_class or sampler.default, seed))]
    if schedule is not None:
        out["schedule"] = {"network": schedule.network, "steps": schedule.steps, "epochs": schedule.epochs,
                           "init": schedule.init}
    return out


def made_vectors() -> list[dict]:
    """The vectors --make writes (seeded: the same every run)."""
    from d3codec.methods.d2m import ConditionalGenerator
    from d3codec.methods.d3 import D3Config, GroupPlan, group_entry, quantise_priors
    from d3codec.models import ConvNet, Decoder, build_model
    from d3codec.weights import quantise_state

    gen = torch.Generator().manual_seed(2026)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    vectors = []

    def add(file, description, sections, archive="read", reason=None, container="read", version="1.1",
            compress="auto", damage=None, draws=((None, 0),)):
        v = {"file": file, "description": description, "version": version, "compress": compress,
             "container": container, "archive": archive, "sections": sections}
        if reason:
            v["reason"] = reason
        if damage:
            v["damage"] = damage
        if archive == "read":
            v["draws"] = [list(d) for d in draws]
        vectors.append(v)
        return v

    # pixel: float16 images, I32 labels, soft labels (F32), three classes
    px_meta = {"format": "d3", "method": "pixel", "dataset": dataset(["a", "b", "c"], [1, 2, 3]),
               "params": {"objective": "dm"}}
    px = {"images": (torch.rand(3, 1, 2, 3, generator=gen) * 1.2 - 0.1).half(),
          "labels": torch.tensor([2, 0, 1], dtype=torch.int32)}
    soft = torch.softmax(rand(3, 3), 1)
    add("pixel-i32-soft.d3", "a pixel archive: float16 images, I32 labels (allowed for any class count), float32 "
        "soft labels", [json_section(px_meta, "none"), tensors_section("images", px, codec="none"),
                        tensors_section("soft_labels", {"soft_labels": soft}, codec="none")], compress="never")

    # bptt with fixed init on 16×16 images: LeNet's θ₀ (F16), F32 step sizes, U8 images
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        lenet = build_model("lenet", 1, 2, 16)
    bp_meta = {"format": "d3", "method": "pixel", "dataset": dataset(["zero", "one"], [1, 16, 16]),
               "params": {"objective": "bptt", "network": "lenet", "init": "fixed", "inner_steps": 1,
                          "inner_epochs": 2, "theta0_dtype": "float16"}}
    bp_images = {"images": torch.randint(0, 256, (2, 1, 16, 16), generator=gen, dtype=torch.uint8),
                 "labels": torch.tensor([0, 1], dtype=torch.uint8), "range": torch.tensor([[0.0, 1.0], [-0.1, 1.1]])}
    schedule = {"step_sizes": torch.tensor([0.02, 0.01]),
                **{f"theta0.{k}": v.detach().half() for k, v in lenet.named_parameters()}}
    add("bptt-lenet16-fixed.d3", "a pixel archive of objective bptt, fixed init: 2 classes of one 16x16 uint8 image, "
        "LeNet's θ₀ as float16 under theta0.<name>, 1 step x 2 epochs",
        [json_section(bp_meta), tensors_section("images", bp_images), tensors_section("schedule", schedule)])

    # d3, int8 storage, two groups ([0, 1) and [1, 3)), soft labels in both, images 1×8×8 (one upsampling)
    cfg = D3Config(decoder_dtype="int8", prior_dtype="int8", soft_labels=True)
    plans = [GroupPlan(0, 1, 3, 2, 4), GroupPlan(1, 3, 3, 2, 4)]
    priors, decoders, labels = {}, {}, {}
    for i, g in enumerate(plans):
        k, p, z = g.num_classes, g.priors_per_class, g.latent_dim
        priors.update(quantise_priors(rand(k, p, z), -2 + 0.5 * rand(k, p, z), f"g{i}.", "int8"))
        dec = Decoder(z, (1, 8, 8), g.decoder_width)
        decoders.update(quantise_state({n: 0.5 * rand(*v.shape) for n, v in dec.state_dict().items()}, f"g{i}.", "int8"))
        labels[f"g{i}"] = torch.softmax(2 * rand(k, p, k), -1).half()
    d3_meta = {"format": "d3", "method": "d3", "dataset": dataset(["p", "q", "r"], [1, 8, 8]),
               "params": {"groups": [group_entry(g, cfg) for g in plans]}}
    add("d3-int8-two-groups.d3", "a d3 archive: 3 classes in 2 groups, latent 3, 2 priors per class, width-4 int8 "
        "decoders (8x8 images: one upsampling), int8 priors, float16 soft labels per prior; expansions at the "
        "default count (seed 0) and at 3 per class (seed 7), so priors cycle",
        [json_section(d3_meta), tensors_section("priors", priors), tensors_section("decoder", decoders),
         tensors_section("prior_labels", labels)], draws=((None, 0), (3, 7)))

    # d3, float16 storage, RGB 9×9 (a crop from 10×10), no soft labels
    cfg16 = D3Config(decoder_dtype="float16", prior_dtype="float16", soft_labels=False)
    g = GroupPlan(0, 2, 4, 3, 8)
    dec = Decoder(4, (3, 9, 9), 8)
    d3f_meta = {"format": "d3", "method": "d3", "dataset": dataset(["u", "v"], [3, 9, 9]),
                "params": {"groups": [group_entry(g, cfg16)]}}
    add("d3-float16-rgb.d3", "a d3 archive: 2 classes in one group, RGB 9x9 images (decoded at 10x10, cropped), "
        "latent 4, 3 priors per class, a width-8 float16 decoder, float16 priors, no soft labels",
        [json_section(d3f_meta), tensors_section("priors", quantise_priors(rand(2, 3, 4), -1 + 0.3 * rand(2, 3, 4), "g0.",
                                                                             "float16")),
         tensors_section("decoder", quantise_state({n: 0.4 * rand(*v.shape) for n, v in dec.state_dict().items()},
                                                   "g0.", "float16"))], draws=((None, 0), (2, 1)))

    # d2m: upconv-v2, int8, 2 classes of 8×8; and the same with an int8 ConvNet-3 teacher of width 2
    generator = ConditionalGenerator(2, 3, 2, 4, (1, 8, 8))
    g_state = quantise_state({n: 0.5 * rand(*v.shape) for n, v in generator.state_dict().items()}, "", "int8")
    d2m_params = {"architecture": "upconv-v2", "noise_dim": 3, "embed_dim": 2, "generator_width": 4,
                  "weight_dtype": "int8", "samples_per_class": 3}
    d2m_meta = {"format": "d3", "method": "d2m", "dataset": dataset(["s", "t"], [1, 8, 8]), "params": d2m_params}
    add("d2m-int8.d3", "a d2m archive: an upconv-v2 generator of width 4 (int8), noise 3, class embeddings 2, "
        "8x8 images, 3 samples per class by default; expansions at the default (seed 0) and at 5 per class (seed 5)",
        [json_section(d2m_meta), tensors_section("generator", g_state)], draws=((None, 0), (5, 5)))
    teacher = ConvNet(1, 2, 8, width=2)
    t_state = quantise_state({n: 0.5 * rand(*v.shape) for n, v in teacher.state_dict().items()}, "", "int8")
    d2m_t_meta = {**d2m_meta, "params": {**d2m_params, "teacher_width": 2, "label_temperature": 2.0}}
    add("d2m-int8-teacher.d3", "the d2m archive above with an ancillary int8 ConvNet-3 teacher of width 2 "
        "(label temperature 2): every sample gets the teacher's soft label",
        [json_section(d2m_t_meta), tensors_section("generator", g_state),
         tensors_section("teacher", t_state, critical=False)], draws=((None, 0), (2, 9)))

    # ---- negative vectors: a reader MUST refuse each ----
    good_px = next(v for v in vectors if v["file"] == "pixel-i32-soft.d3")["sections"]
    bad = lambda f, r, s, **kw: add(f, r, s, archive=kw.pop("archive", "refuse"), reason=r, **kw)  # noqa: E731

    # the container
    many = [{"name": f"{i:03d}" + "x" * 61, "critical": False, "content": "bytes", "codec": "none", "hex": ""}
            for i in range(256)]
    bad("neg-table-too-long.d3", "the table length is 20 481, over the limit of 20 480 (§2, §4)", many,
        container="refuse", archive=None, compress="never", damage={"pad_table": 1})
    bad("neg-truncated.d3", "the file is one byte shorter than its table declares (§2)", good_px,
        container="refuse", compress="never", damage={"truncate": 1})
    bad("neg-zstd-frame-size.d3", "a zstd section's frame declares another size than the table's raw length (§3)",
        [json_section({"format": "d3", "pad": "z" * 200})], container="refuse", archive=None,
        damage={"raw_length": [0, 1]})
    bad("neg-unknown-critical-codec.d3", "a critical section of unknown codec 7 (§3)",
        [json_section({"format": "d3"}, "none")], container="refuse", archive=None, compress="never",
        damage={"codec": [0, 7]})
    for name, text, why in (("neg-json-nan.d3", '{"format":"d3","x":NaN}', "NaN is not JSON (§3)"),
                            ("neg-json-overflow.d3", '{"format":"d3","x":1e400}', "1e400 overflows binary64 (§3)"),
                            ("neg-json-duplicate-key.d3", '{"format":"d3","format":"d3"}', "a key appears twice (§3)"),
                            ("neg-json-big-integer.d3", '{"format":"d3","x":9223372036854775808}',
                             "an integer of 2^63 (§3)")):
        bad(name, why, [{"name": "meta", "critical": True, "content": "json", "codec": "none", "json_text": text}],
            container="refuse", archive=None, compress="never")

    # the archive layer
    def px_with(meta=None, images=None, extra=None, meta_critical=True):
        m = json.loads(json.dumps(px_meta)) if meta is None else meta
        sections = [json_section(m, "none", meta_critical), tensors_section("images", images or px, codec="none")]
        return sections + (extra or [])

    bad("neg-meta-ancillary.d3", "meta is flagged ancillary; it must be critical (§3, §5.1)",
        px_with(meta_critical=False), compress="never")
    bad("neg-labels-i64.d3", "labels of dtype I64: only U8 and I32 are allowed (§5.5)",
        px_with(images={**px, "labels": px["labels"].long()}), compress="never")
    u8 = {"images": torch.zeros(3, 1, 2, 3, dtype=torch.uint8), "labels": torch.tensor([0, 1, 2], dtype=torch.uint8)}
    bad("neg-range-f16.d3", "a range of dtype F16: it must be F32 (§5.5)",
        px_with(images={**u8, "range": torch.zeros(3, 2, dtype=torch.float16)}), compress="never")
    bad("neg-soft-labels-sum.d3", "soft labels whose rows sum to 0.6 (§5.2)",
        px_with(extra=[tensors_section("soft_labels", {"soft_labels": torch.full((3, 3), 0.2)}, codec="none")]),
        compress="never")
    negative = torch.tensor([[1.5, -0.5, 0.0], [0.3, 0.3, 0.4], [0.3, 0.3, 0.4]])
    bad("neg-soft-labels-negative.d3", "a soft label below 0 (§5.2)",
        px_with(extra=[tensors_section("soft_labels", {"soft_labels": negative}, codec="none")]), compress="never")
    bad("neg-extra-tensor.d3", "the images section holds a tensor it does not define (§5.1)",
        px_with(images={**px, "extra": torch.zeros(1)}), compress="never")
    bad("neg-unknown-critical-section.d3", "a critical section the pixel method does not define (§3)",
        px_with(extra=[{"name": "zz", "critical": True, "content": "bytes", "codec": "none", "hex": "00"}]),
        compress="never")
    float_dim = {**d2m_meta, "params": {**d2m_params, "noise_dim": 3.0}}
    bad("neg-integer-as-float.d3", "noise_dim written 3.0: an integer field must be a JSON integer (§5.1)",
        [json_section(float_dim), tensors_section("generator", g_state)])
    bad("neg-teacher-critical.d3", "the teacher section is flagged critical; §5.1 defines it ancillary",
        [json_section(d2m_t_meta), tensors_section("generator", g_state), tensors_section("teacher", t_state)])
    tiny = {**d2m_meta, "dataset": dataset(["s", "t"], [1, 4, 4]),
            "params": {**d2m_params, "teacher_width": 2, "label_temperature": 1.0}}
    tiny_gen = ConditionalGenerator(2, 3, 2, 4, (1, 4, 4))
    bad("neg-teacher-4px.d3", "a ConvNet-3 teacher for 4x4 images: it needs at least 8x8 (§5.3)",
        [json_section(tiny), tensors_section("generator", quantise_state(tiny_gen.state_dict(), "", "int8")),
         tensors_section("teacher", {"features.0.weight": torch.zeros(2, 1, 3, 3, dtype=torch.int8),
                                     "features.0.weight.scale": torch.ones(2, dtype=torch.float16)}, critical=False)])
    gap = json.loads(json.dumps(d3_meta))
    gap["params"]["groups"][1]["classes"] = [2, 3]
    bad("neg-groups-gap.d3", "the groups skip class 1: they must follow one another from class 0 (§5.6)",
        [json_section(gap), tensors_section("priors", priors), tensors_section("decoder", decoders),
         tensors_section("prior_labels", labels)])
    no_labels = [json_section(d3_meta), tensors_section("priors", priors), tensors_section("decoder", decoders)]
    bad("neg-prior-labels-missing.d3", "groups with soft labels but no prior_labels section (§5.1, §5.6)", no_labels)
    wide = json.loads(json.dumps(d3_meta))
    wide["params"]["groups"] = [{**wide["params"]["groups"][0], "classes": [0, 3], "decoder_width": 6,
                                 "soft_labels": False}]
    shapes6 = {"fc.weight": (6 * 16, 3), "fc.bias": (96,), "blocks.1.weight": (6, 6, 3, 3), "blocks.1.bias": (6,),
               "blocks.2.weight": (6,), "blocks.2.bias": (6,), "out.weight": (1, 6, 3, 3), "out.bias": (1,)}
    bad("neg-decoder-width-6.d3", "a decoder of width 6: GroupNorm(4 groups) cannot split 6 channels (§5.3)",
        [json_section(wide), tensors_section("priors", quantise_priors(torch.zeros(3, 2, 3), torch.zeros(3, 2, 3), "g0.",
                                                                         "int8")),
         tensors_section("decoder", quantise_state({n: torch.zeros(s) for n, s in shapes6.items()}, "g0.", "int8"))])
    return vectors


def compact_json(doc: dict) -> str:
    """JSON with one key a line, but every list of numbers on one line (the files stay readable)."""
    import re

    text = json.dumps(doc, indent=1, ensure_ascii=False)
    return re.sub(r"\[\s*(-?[0-9][-0-9.e+, \n]*?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def make() -> None:
    """Rewrite vectors.json: the hand-written vectors kept, the made ones regenerated, every positive
    archive vector's expansion recomputed with d3codec; then write the files."""
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
    doc["vectors"] = kept + made_vectors()
    doc["zstd_library"] = zstd_library()
    for v in doc["vectors"]:
        v.pop("expect", None)
        if v["archive"] == "read":
            data = build(v)
            v["expect"] = [expansion(data, n, seed) for n, seed in v["draws"]]
    (HERE / "vectors.json").write_text(compact_json(doc) + "\n")
    sys.exit(main(check=False))


if __name__ == "__main__":
    if "--make" in sys.argv:
        make()
    sys.exit(main("--check" in sys.argv))
