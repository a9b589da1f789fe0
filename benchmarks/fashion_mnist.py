"""Benchmark on real Fashion-MNIST: DM, D3 and D2M archives against random real images in the same bytes.

For each IPC budget, in one run: compress with DM, D3 and D2M (fast presets unless told
otherwise), train ``--runs`` fresh ConvNet-3 students on each archive and on random real images
stored in the same bytes (as float32 and as PNG), and record final-epoch test accuracy mean ± std,
file bytes, distillation seconds and student seconds. D3 archives are sampled with
``--d3-samples-per-class`` images per class (one number, or one per ``--ipc``; 40 by default, between
what DM stores at IPC 1 (4 per class) and at IPC 10 (55 per class); "priors" draws one sample per
prior; students' seconds are in the table, since more samples cost more); one D3 row has soft
labels switched off, to show what they buy. One D2M archive per budget gives a row for each of
``--d2m-samples-per-class`` (1, 10, 50 and 100 by default), with pre-training and fine-tuning
seconds apart; when the archive stores its teacher for soft labels (``--d2m-soft-labels`` or the
preset's choice), the same samples also train students on hard labels, and random real PNG images
in the budget less the teacher's bytes train students on that teacher's labels (the same-labels
baseline), so that what the labels buy is not credited to the generator. Optionally also DM with
the paper's 256 real images per class per iteration (``--real-side-ipc``), to show what the fast
preset's cheaper real side costs, and students of other architectures than ConvNet-3
(``--models convnet3 resnet18``: cross-architecture rows). Issue 24's rows: every method also with a
stored int8 labeller of ``--labeller-width`` (its students labelled online by it, and the same images
with hard labels), DM through each of ``--formations`` (IDC's lowres, FreD's dct), random real images
as JPEG (``--jpeg-quality``) beside float32 and PNG, and the fair baseline: random real PNG and JPEG
images in the bytes the same labeller leaves, labelled online by it. A second table gives DD-Ranking's
metrics of every archive row (d3codec.evaluation.ranking; the full-data accuracy from benchmarks/full-data.json).
Issue 34's table: ``--formations`` entries may name a matching and a budget (``dct-variance:3:dance@1``: DM
through FreD's variance-ranked coefficients at factor 3 with DANCE's matching, at IPC 1 only), and
``--runs-for PATTERN=N`` gives the decisive rows (the default archive, the strongest real-image baseline)
more students than the others. Students are compiled (d3codec.evaluation.students: ``compile="auto"``).
Writes benchmarks/RESULTS.md and a JSON file of every number.

Each build (distil an archive, or draw the real images) gives one or more rows, each trained by
``--runs`` students; ``--jobs N`` runs builds and students in N worker processes (the longest first),
and every finished build and student is saved in the JSON file at once, so ``--resume`` after an
interruption loses at most the tasks that were running. ``--append`` starts a new run in an
existing JSON file and keeps the earlier runs' rows in the table.

    python benchmarks/fashion_mnist.py --ipc 1 10 --runs 3 --epochs 300 --jobs 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch
from hardware import cpu_name
from safetensors.torch import load_file, save_file

from d3codec import D3Dataset
from d3codec.data.sources import load_dataset
from d3codec.decode.labeller import Labeller, as_stored, labeller_parts, section_cost, stored_bytes
from d3codec.encode.defaults import default_choice
from d3codec.encode.labelled import LabelledEncoder, LabellerConfig, train_labeller
from d3codec.encode.pipeline import compress
from d3codec.errors import D3Error
from d3codec.evaluation.ranking import Ranking
from d3codec.evaluation.students import (
    JPEG_QUALITY,
    EvalResult,
    StudentConfig,
    random_real_subset,
    test_split,
    train_student,
)
from d3codec.format.accounting import ipc_budget
from d3codec.format.container import D3Reader
from d3codec.format.meta import open_archive
from d3codec.methods import BuildContext, get_method, method_names
from d3codec.methods.d2m import PRESETS as D2M_PRESETS
from d3codec.methods.d2m import load_labeller
from d3codec.methods.matching import MATCHINGS
from d3codec.nn.models import ConvNet, resolve_device
from d3codec.util.runtime import keep_freed_memory

HERE = Path(__file__).resolve().parent

# ../shared/background.md; "recalled" figures are from memory of the papers' tables, unverified
PUBLISHED = {
    1: {
        "random real": "≈51 (recalled)",
        "DM": "70.7 (recalled)",
        "DC": "70.5",
        "DSA": "70.6",
        "MTT": "75.1 (recalled)",
        "DANCE": "81.5",
        "FreD (storage counted)": "84.6",
        "IDC (storage counted)": "-",
    },
    10: {
        "random real": "≈74 (recalled)",
        "DM": "83.5 (recalled)",
        "DC": "82.3",
        "DSA": "84.6",
        "MTT": "87.2 (recalled)",
        "DANCE": "86.3",
        "FreD (storage counted)": "89.1",
        "IDC (storage counted)": "86.0",
    },
    50: {
        "random real": "≈82.5 (recalled)",
        "DM": "88.1 (recalled)",
        "DC": "83.6",
        "DSA": "88.7",
        "MTT": "88.3 (recalled)",
        "DANCE": "86.9",
        "FreD (storage counted)": "-",
        "IDC (storage counted)": "-",
    },
}
# DANCE: its README's table (Zhang et al., IJCAI 2024, Table 1; best of its evaluations); FreD and IDC: FreD's README,
# as issue 34 quotes them (every stored byte counted)


def machine(jobs: int = 1, threads: int | None = None) -> str:
    cpu = cpu_name()
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {jobs} worker(s) of {threads} thread(s)"


def run(args) -> dict:
    log = lambda m: print(m, flush=True)  # noqa: E731
    invocation = {
        "command": "python " + " ".join(sys.argv),
        "date": dt.date.today().isoformat(),
        "machine": machine(args.jobs, args.threads),
        "device": str(resolve_device(args.device)),
        "note": args.note,
        "resume": args.resume,
    }
    planned = [[ipc, name] for ipc in args.ipc for name in row_names(ipc, args)]
    results = {
        "invocations": [invocation],
        "epochs": args.epochs,
        "runs": args.runs,
        "rows": [],
        "series_start": 1,
        "planned": planned,
        "partial": {},
    }
    if (args.resume or args.append) and Path(args.json).is_file():
        earlier = json.loads(Path(args.json).read_text())
        if (earlier["epochs"], earlier["runs"]) != (args.epochs, args.runs):
            raise SystemExit(
                f"{args.json} holds runs with --epochs {earlier['epochs']} --runs {earlier['runs']}: "
                "pass the same, or write to another --json"
            )
        results["rows"] = earlier["rows"]
        results["invocations"] = earlier["invocations"] + [invocation]
        if args.resume:  # the interrupted series goes on: its finished rows and students are kept
            results["series_start"] = series_start(earlier)
            results["partial"] = earlier.get("partial", {})
            planned = [p for p in earlier.get("planned", []) if p not in planned] + planned
            results["planned"] = planned
        else:
            results["series_start"] = len(results["invocations"])
    done = {(r["ipc"], r["name"]) for r in series_rows(results)}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    # every build (distil an archive, or draw real images) gives one or more rows, each with args.runs
    # students; tasks run in --jobs worker processes, longest first, and each finished one is saved at once
    ready = []  # (estimated cost, task) of tasks that can start now
    for ipc in args.ipc:
        for b in builds(ipc, args):
            rows = [r for r in b["rows"] if (ipc, r[0]) not in done]
            if not rows:
                continue
            keys = [row_key(ipc, name) for name, *_ in rows]
            parts = [results["partial"].get(key) for key in keys]
            if all(part is not None and Path(part["inputs"]).is_file() for part in parts):
                for key, part in zip(keys, parts):
                    ready += student_tasks(key, part, args.runs)
                continue
            for key in keys:
                results["partial"].pop(key, None)
            stem = f"ipc{ipc}-{slug(b['name'])}"
            spec = {
                "ipc": ipc,
                "name": b["name"],
                "kind": b["kind"],
                "overrides": b["overrides"],
                "preset": args.preset,
                "seed": args.seed,
                "archive": str(work / f"{stem}.d3"),
                "rows": [
                    {
                        "key": key,
                        "name": name,
                        "samples": samples,
                        "model": model,
                        "labels": labels,
                        "inputs": str(work / f"{stem}-{samples or 'stored'}-{labels}.inputs.safetensors"),
                    }
                    for key, (name, samples, model, labels) in zip(keys, rows)
                ],
            }
            ready.append(((1, BUILD_PRIORITY[b["kind"]]), ("build", spec)))
    save(results, args)
    context = multiprocessing.get_context("spawn")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(
        args.jobs,
        context,
        initializer=init_worker,
        initargs=(
            threads,
            args.data_root,
            args.device,
            args.epochs,
            args.seed,
            args.jpeg_quality,
            args.labeller_epochs,
        ),
    ) as pool:
        running = {}
        while ready or running:
            ready.sort(key=lambda t: t[0], reverse=True)
            while ready and len(running) < args.jobs:
                _, task = ready.pop(0)
                log(f"== start {describe(task)}")
                running[pool.submit(TASKS[task[0]], task[1])] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                kind, spec = running.pop(future)
                out = future.result()
                if kind == "build":
                    for row in out:
                        part = {**row, "accuracies": {}, "student_seconds": {}, "runs": row_runs(row["name"], args)}
                        results["partial"][row["key"]] = part
                        log(
                            f"== built {row['key']}: {row['images']} images, {row['bytes']} bytes"
                            + (
                                f", distilled in {row['distill_seconds']} s"
                                if row["distill_seconds"] is not None
                                else ""
                            )
                        )
                        ready += student_tasks(row["key"], part, args.runs)
                else:
                    part = results["partial"][spec["key"]]
                    part["accuracies"][str(spec["run"])], part["student_seconds"][str(spec["run"])] = out
                    log(
                        f"  {spec['key']} student {spec['run'] + 1}/{part.get('runs', args.runs)}: "
                        f"{100 * out[0]:.2f} % ({out[1]:.0f} s)"
                    )
                    if len(part["accuracies"]) == part.get("runs", args.runs):
                        finish_row(results, spec["key"], planned)
                save(results, args)
    return results


MODEL_NAMES = {"convnet3": "ConvNet-3", "resnet18": "ResNet-18", "mlp": "MLP"}


def builds(ipc: int, args) -> list[dict]:
    """Every build at this IPC budget, in table order: {"name", "kind", "overrides", "rows"}, where each
    row is (row name, samples drawn per class or None for what the build stores, student model, labels).
    Labels: "auto" (the archive's soft labels where it has them), "hard", or "real+teacher": random
    real PNG images labelled by the D2M archive's stored teacher, in the budget less the teacher's bytes
    (the same-labels baseline that DD-Ranking argues for)."""
    out = []

    def add(
        name: str, kind: str, overrides: dict | None = None, samples: list | None = None, variants: tuple | None = None
    ) -> None:
        rows = []
        for row_name, labels in variants or ((name, "auto"),):
            for model in args.models:
                arrow = "" if model == "convnet3" else f" → {MODEL_NAMES[model]}"
                for n in (samples if labels != "real+teacher" else None) or [None]:
                    count = f", {n}/class" if kind == "d2m" and n is not None else ""
                    rows.append((row_name + count + arrow, n, model, labels))
        out.append({"name": name, "kind": kind, "overrides": overrides or {}, "rows": rows})

    labelled = ((", labelled online", "online"), (", its images with hard labels", "hard"))

    def with_labeller(name: str, kind: str, overrides: dict | None = None, samples: list | None = None) -> None:
        """The build with a stored labeller (--labeller-width) beside it: rows online and hard."""
        if args.labeller_width:
            named = f"{name[:-1]}, labeller w{args.labeller_width})"
            add(
                named,
                kind,
                {**(overrides or {}), "labeller_width": args.labeller_width},
                samples,
                tuple((named + suffix, labels) for suffix, labels in labelled),
            )

    if args.default_row:  # what `d3 compress fashion-mnist --ipc N` writes with no method named
        choice = default_choice(10, ipc, args.preset)
        add(default_row_name(choice), choice.method, dict(choice.options))
    if "dm" in args.methods:
        dm = "DM (fast preset)" if args.preset == "fast" else f"DM ({args.preset})"
        add(dm, "dm")
        if args.labeller_twins:
            with_labeller(dm, "dm")
        for formation in args.formations:
            spec = parse_formation_spec(formation)
            if spec["ipc"] is not None and spec["ipc"] != ipc:
                continue
            matching = spec["matching"]
            named = f"{dm[:-1]}, {spec['kind']} ×{spec['factor']}" + (f", {matching} matching)" if matching else ")")
            overrides = {
                "formation": spec["kind"],
                "formation_factor": spec["factor"],
                **({"matching": matching} if matching else {}),
            }
            add(named, "dm", overrides)
            if not spec["no_labeller"] and args.labeller_twins:
                with_labeller(named, "dm", overrides)
        if ipc in args.real_side_ipc:
            add(f"DM ({args.preset}, 256 real/class/iter)", "dm", {"real_per_class": 256})
    matching = {"matching": args.matching} if args.matching else {}
    matched = f", {args.matching} matching" if args.matching else ""
    if "d3" in args.methods:
        add(f"D3 ({args.preset} preset{matched})", "d3", matching, samples=[d3_samples(ipc, args)])
        if args.labeller_twins:
            with_labeller(f"D3 ({args.preset} preset{matched})", "d3", matching, samples=[d3_samples(ipc, args)])
        if ipc in args.no_labels_ipc:
            add(
                f"D3 ({args.preset}, no soft labels{matched})",
                "d3",
                {"soft_labels": False, **matching},
                samples=[d3_samples(ipc, args)],
            )
    if "d2m" in args.methods:
        overrides = ({} if args.d2m_soft_labels is None else {"soft_labels": args.d2m_soft_labels}) | matching
        soft = overrides.get("soft_labels", D2M_PRESETS[args.preset].soft_labels)
        name = f"D2M ({args.preset} preset{', soft labels' if soft else ''}{matched})"
        # with a stored teacher: the same archive's samples under hard labels, and real images under its labels
        variants = (
            (
                (name, "auto"),
                (f"D2M ({args.preset} preset, its samples with hard labels)", "hard"),
                ("random real (png) + D2M's stored teacher", "real+teacher"),
            )
            if soft
            else None
        )
        add(name, "d2m", overrides, samples=args.d2m_samples_per_class, variants=variants)
    for storage in args.real_storages:
        add(f"random real ({REAL_NAMES[storage].format(q=args.jpeg_quality)})", storage)
    if args.labeller_width:
        for storage in ("png", "jpeg"):  # the fair baseline: the same labeller, in the bytes it leaves
            add(
                f"random real ({REAL_NAMES[storage].format(q=args.jpeg_quality)}, labeller w{args.labeller_width})",
                storage,
                {"labeller_width": args.labeller_width},
                variants=(
                    (
                        f"random real ({REAL_NAMES[storage].format(q=args.jpeg_quality)}) + the same labeller w"
                        f"{args.labeller_width}, online",
                        "online",
                    ),
                ),
            )
    return out


REAL_NAMES = {"float32": "float32", "png": "PNG", "jpeg": "JPEG q{q}"}


def default_row_name(choice) -> str:
    """``default (DM, dct-variance ×3, dance matching)``: the default rule's pick (d3codec.encode.defaults)."""
    options = choice.options
    shown = [choice.method.upper()]
    if "formation" in options:
        shown.append(f"{options['formation']} ×{options['formation_factor']}")
    if "matching" in options:
        shown.append(f"{options['matching']} matching")
    return f"default ({', '.join(shown)})"


def parse_formation_spec(text: str) -> dict:
    """``KIND:FACTOR[:MATCHING][@IPC][!]``: DM through formation KIND ×FACTOR, with MATCHING (dm, dance; default
    the preset's), at one IPC only where given, and without its stored-labeller twin where it ends in ``!``."""
    no_labeller = text.endswith("!")
    text, _, ipc = text.rstrip("!").partition("@")
    kind, factor, *rest = text.split(":")
    if len(rest) > 1 or not factor.isdigit():
        raise SystemExit(f"--formations: {text!r} is not KIND:FACTOR[:MATCHING][@IPC][!]")
    return {
        "kind": kind,
        "factor": int(factor),
        "matching": rest[0] if rest else None,
        "ipc": int(ipc) if ipc else None,
        "no_labeller": no_labeller,
    }


def row_runs(name: str, args) -> int:
    """Students of a row: the first ``--runs-for PATTERN=N`` whose PATTERN the row's name contains, else --runs."""
    for rule in args.runs_for:
        pattern, _, count = rule.rpartition("=")
        if pattern and pattern in name:
            return int(count)
    return args.runs


def d3_samples(ipc: int, args) -> int | None:
    """Samples per class drawn from the D3 archive at this IPC budget (None: one per prior)."""
    values = args.d3_samples_per_class
    value = values[0] if len(values) == 1 else values[args.ipc.index(ipc)]
    return None if value == "priors" else int(value)


def row_names(ipc: int, args) -> list[str]:
    return [name for b in builds(ipc, args) for name, *_ in b["rows"]]


def row_key(ipc: int, name: str) -> str:
    return f"IPC {ipc}: {name}"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


# the methods this benchmark can run (built through the registry); bptt has its own, benchmarks/bptt_fashion_mnist.py
METHODS = [name for name in method_names() if name != "bptt"]

# scheduling priority: builds before students (they unlock them), the longest first
BUILD_PRIORITY = {"d2m": 4, "d3": 3, "dm": 2, "png": 1, "jpeg": 1, "float32": 0}


def student_tasks(key: str, part: dict, runs: int) -> list[tuple[tuple, tuple]]:
    """The (priority, task) of each student of a built row that has not finished yet (the row's own count of
    students where it has one, else ``runs``)."""
    runs = part.get("runs", runs)
    cost = part["images"] * (13 if part.get("model") == "resnet18" else 1)
    return [
        (
            (0, cost),
            ("student", {"key": key, "run": r, "inputs": part["inputs"], "model": part.get("model", "convnet3")}),
        )
        for r in range(runs)
        if str(r) not in part["accuracies"]
    ]


def describe(task: tuple) -> str:
    kind, spec = task
    return (
        f"build IPC {spec['ipc']}: {spec['name']}" if kind == "build" else f"student {spec['run'] + 1} of {spec['key']}"
    )


def series_start(results: dict) -> int:
    """1-based index of the invocation that began the latest series (a run and its --resume calls)."""
    if "series_start" in results:
        return results["series_start"]
    resumed = [v.get("resume", "--resume" in v["command"]) for v in results["invocations"]]
    return max(i for i, r in enumerate(resumed, 1) if not r)


def series_rows(results: dict) -> list[dict]:
    return [r for r in results["rows"] if r.get("run", 1) >= results["series_start"]]


def finish_row(results: dict, key: str, planned: list) -> dict:
    """Move a row whose students have all finished from "partial" to "rows" (the series in planned order)."""
    part = results["partial"].pop(key)
    runs = range(len(part["accuracies"]))
    r = EvalResult(
        part["name"],
        part["images"],
        [part["accuracies"][str(i)] for i in runs],
        [part["student_seconds"][str(i)] for i in runs],
        part["bytes"],
    )
    print(r.summary(), flush=True)
    row = {
        "ipc": part["ipc"],
        "name": part["name"],
        "model": part.get("model", "convnet3"),
        "run": len(results["invocations"]),
        "images": part["images"],
        "bytes": part["bytes"],
        "distill_seconds": part["distill_seconds"],
        "accuracies": r.accuracies,
        "mean": r.mean,
        "std": r.std,
        "student_seconds": r.seconds,
        **part["extra"],
    }
    order = {(ipc, name): i for i, (ipc, name) in enumerate(planned)}
    earlier = [x for x in results["rows"] if x.get("run", 1) < results["series_start"]]
    series = sorted(series_rows(results) + [row], key=lambda x: order.get((x["ipc"], x["name"]), len(order)))
    results["rows"] = earlier + series
    return row


# ---- worker processes: each loads the data once and runs builds and students --------------------------

_WORKER: dict = {}


def init_worker(
    threads: int, data_root: str | None, device: str, epochs: int, seed: int, jpeg_quality: int, labeller_epochs: float
) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(
        data_root=data_root,
        device=resolve_device(device),
        epochs=epochs,
        seed=seed,
        jpeg_quality=jpeg_quality,
        labeller_epochs=labeller_epochs,
    )


def worker_data():
    if "real" not in _WORKER:
        _WORKER["real"] = load_dataset("fashion-mnist", _WORKER["data_root"])
        _WORKER["test"] = test_split(_WORKER["real"])
    return _WORKER["real"], _WORKER["test"]


def build(spec: dict) -> list[dict]:
    """Distil an archive (or draw the random real images) and save each of its rows' student inputs.

    Returns: per row, the fields known before training: key, name, model, inputs path, images, bytes,
    distill_seconds, extra.
    """
    real, _ = worker_data()
    device, seed, ipc, kind = _WORKER["device"], spec["seed"], spec["ipc"], spec["kind"]
    budget = ipc_budget(ipc, real.num_classes, real.image_shape)
    distill_s, extra, draws = None, {"budget": budget}, {}  # draws: samples per class → (images, targets)
    if kind in METHODS:  # checkpoints: ARCHIVE.ckpt.safetensors (d2m's pre-training: ARCHIVE.pretrain.safetensors)
        overrides = dict(spec["overrides"])
        width = overrides.pop("labeller_width", None)
        encoder = get_method(kind).make_encoder(spec["preset"], overrides, BuildContext(Path(spec["archive"])))
        if width:
            encoder = LabelledEncoder(encoder, LabellerConfig(width, _WORKER["labeller_epochs"]))
        t = time.time()
        res = compress(real, spec["archive"], encoder=encoder, ipc=ipc, seed=seed, device=device, progress=False)
        distill_s, used = round(time.time() - t, 1), res.file_bytes
        reader, meta = open_archive(spec["archive"])
        reader.close()
        params = meta["params"]
        extra["config"] = params["config"]
        if kind == "dm":
            ds = D3Dataset(spec["archive"])
            for labels in dict.fromkeys(row["labels"] for row in spec["rows"]):
                draws[None, labels] = ds.images, ds.labeller if labels == "online" else ds.labels, used
            extra.update(images_per_class=params["images_per_class"], storage=params["storage_dtype"])
            if "formation" in params:
                extra["formation"] = f"{params['formation']['kind']} ×{params['formation']['factor']}"
        else:  # sampled archives: one draw per distinct (samples per class, labels) of the rows
            for n, labels in dict.fromkeys((row["samples"], row["labels"]) for row in spec["rows"]):
                if labels == "real+teacher":
                    draws[n, labels] = real_under_teacher(spec["archive"], real, budget, seed)
                    continue
                t = time.time()
                ds = D3Dataset(
                    spec["archive"], samples_per_class=n, seed=seed, targets="auto" if labels == "online" else labels
                )
                extra["decode_images_per_second_cpu"] = round(len(ds) / (time.time() - t))
                targets = (
                    ds.labeller if labels == "online" else ds.soft_labels if ds.soft_labels is not None else ds.labels
                )
                draws[n, labels] = ds.images, targets, used
        if kind == "d3":
            group = params["groups"][0]
            extra.update(
                priors_per_class=group["priors_per_class"],
                latent_dim=group["latent_dim"],
                decoder_width=group["decoder_width"],
                teacher_accuracy=group["stats"].get("teacher_accuracy"),
            )
        if kind == "d2m":
            extra.update({f: params[f] for f in ("generator_width", "noise_dim", "embed_dim")})
            extra.update(
                {f: params["stats"].get(f) for f in ("pretrain_seconds", "finetune_seconds", "teacher_accuracy")}
            )
        if meta.get("labeller"):
            extra.update(
                labeller_bytes=labeller_bytes(spec["archive"]), labeller_accuracy=meta["stats"].get("labeller_accuracy")
            )
    elif spec["overrides"].get("labeller_width"):  # the fair baseline: the archives' labeller, its bytes less
        config = LabellerConfig(spec["overrides"]["labeller_width"], _WORKER["labeller_epochs"])
        teacher, stats = train_labeller(real, config, seed, device)
        cost = section_cost(labeller_parts(teacher.net, config.temperature, config.dtype)[1])
        images, _, used = random_real_subset(real, budget - cost, kind, seed, _WORKER["jpeg_quality"])
        draws[None, "online"] = (
            images,
            as_stored(teacher.net, real.image_shape, real.mean, real.std, config.dtype, config.temperature),
            used + cost,
        )
        extra.update(labeller_bytes=cost, labeller_accuracy=stats.get("labeller_accuracy"))
    else:
        draws[None, "auto"] = random_real_subset(real, budget, kind, seed, _WORKER["jpeg_quality"])
    out, saved = [], set()
    for row in spec["rows"]:
        images, targets, used = draws[row["samples"], row["labels"]]
        if row["inputs"] not in saved:  # rows of other student models share their inputs
            save_inputs(row["inputs"], images, targets)
            saved.add(row["inputs"])
        sampled = {"samples_per_class": len(images) // real.num_classes} if kind in ("d3", "d2m") else {}
        sampled.update(
            build=spec["name"],
            targets="online" if isinstance(targets, Labeller) else "soft" if targets.dim() == 2 else "hard",
        )
        real_images = row["labels"] == "real+teacher"  # not the archive's images: only the budget is shared
        out.append(
            {
                "key": row["key"],
                "ipc": ipc,
                "name": row["name"],
                "model": row["model"],
                "inputs": row["inputs"],
                "images": len(images),
                "bytes": used,
                "distill_seconds": None if real_images else distill_s,
                "extra": {"budget": budget, "labels": "soft, from the D2M archive's stored teacher", "targets": "soft"}
                if real_images
                else {**extra, **sampled},
            }
        )
    return out


def real_under_teacher(archive: str, real, budget: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Random real PNG images in ``budget`` less the archive's stored teacher section, labelled by that
    teacher: (images, soft labels (N, K), bytes = PNG bytes + the teacher section's stored bytes)."""
    reader, meta = open_archive(archive)
    with reader:
        teacher_bytes = reader.info("teacher").stored_length
        label = load_labeller(reader, meta)
    images, _, used = random_real_subset(real, budget - teacher_bytes, "png", seed)
    return images, torch.cat([label(images[i : i + 1024]) for i in range(0, len(images), 1024)]), used + teacher_bytes


def labeller_bytes(archive: str) -> int:
    with D3Reader(archive) as reader:
        return stored_bytes(reader)


def save_inputs(path: str, images: torch.Tensor, targets) -> None:
    """A row's student inputs: images and targets (hard or soft labels), or images and a labeller (its
    ConvNet-3 weights as the archive's reader got them, float32, and its normalisation and temperature)."""
    if isinstance(targets, Labeller):
        tensors = {f"labeller.{k}": v.detach().float().contiguous() for k, v in targets.net.state_dict().items()}
        tensors.update(
            {
                "labeller_mean": targets.normalise.mean.flatten(),
                "labeller_std": targets.normalise.std.flatten(),
                "labeller_temperature": torch.tensor([targets.temperature]),
            }
        )
        save_file({"images": images.contiguous(), **tensors}, path)
    else:
        save_file({"images": images.contiguous(), "targets": targets.contiguous()}, path)


def load_targets(inputs: dict, real):
    """The targets :func:`save_inputs` saved: a tensor, or the labeller rebuilt."""
    if "targets" in inputs:
        return inputs["targets"]
    state = {k[len("labeller.") :]: v for k, v in inputs.items() if k.startswith("labeller.")}
    c, h = real.image_shape[0], real.image_shape[1]
    net = ConvNet(c, real.num_classes, h, width=state["features.0.weight"].shape[0])
    net.load_state_dict(state)
    return Labeller(
        net, inputs["labeller_mean"].tolist(), inputs["labeller_std"].tolist(), float(inputs["labeller_temperature"])
    )


def student(spec: dict) -> tuple[float, float]:
    """Train student ``run`` (seed + run, as evaluate() seeds it) on a built row: (final accuracy, seconds).
    Its state is saved every minute beside the row's inputs, so that a killed run goes on with ``--resume``
    from the epoch it reached (an IPC 50 student takes hours on one thread)."""
    real, test = worker_data()
    inputs = load_file(spec["inputs"])
    checkpoint = Path(spec["inputs"]).with_suffix(f".student{spec['run']}.ckpt.safetensors")
    train = lambda: train_student(  # noqa: E731
        inputs["images"],
        load_targets(inputs, real),
        real.num_classes,
        real.mean,
        real.std,
        test,
        StudentConfig(model=spec["model"], epochs=_WORKER["epochs"]),
        seed=_WORKER["seed"] + spec["run"],
        device=_WORKER["device"],
        checkpoint=checkpoint,
    )
    try:
        return train()
    except D3Error as error:  # a checkpoint of another run (other epochs, inputs or code): start afresh
        if not checkpoint.is_file() or "checkpoint" not in str(error):
            raise
        print(f"  dropping {checkpoint.name}: {error}", flush=True)
        checkpoint.unlink()
        return train()


TASKS = {"build": build, "student": student}


def save(results: dict, args) -> None:
    Path(args.json).write_text(json.dumps(results, indent=1))
    Path(args.out).write_text(render(results))


def render(results: dict) -> str:
    lines = [
        "# Benchmark: real Fashion-MNIST, ConvNet-3",
        "",
        "(BPTT, the pixel method's second objective, has its own benchmark: [RESULTS-bptt.md](RESULTS-bptt.md).)",
        "",
        "- script runs (the `script run` column; `--resume` keeps the rows of the earlier runs):",
        *[
            f"  {i}. {v['date']}: `{v['command']}` on {v['machine']}; device: {v['device']}"
            + (f". {v['note']}" if v.get("note") else "")
            for i, v in enumerate(results["invocations"], 1)
        ],
        f"- protocol: {results['runs']} fresh ConvNet-3 student{'s' if results['runs'] > 1 else ''} per row, or as "
        'many as a row\'s accuracy says ("(n = 3)"), each seeded apart, '
        f"{results['epochs']} epochs, SGD lr 0.01 "
        "(× 0.1 at half), momentum 0.9, weight decay 5e-4, batch 256, DSA; **final-epoch** test accuracy on the "
        "10 000 test images, mean ± std over students. Bytes: the whole file (archives) or the images "
        "as stored (baselines). Baselines are drawn in the same run.",
        *(
            []
            if any(v["device"].startswith("cuda") for v in results["invocations"])
            else [
                "- CUDA: not measured. Every run above used the CPU; no GPU was available to this project's sessions, "
                "so the speed-up over CPU and whether CPU and CUDA archives of one seed expand to the same accuracy "
                "(issue 7) are still unknown. The code runs on CUDA (`--device auto`) but has not been timed there."
            ]
        ),
        "",
        "| IPC budget | row | script run | bytes | images | distil s | student s (each) | accuracy % (final) "
        "| published % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        pub = PUBLISHED.get(r["ipc"], {}) if r.get("model", "convnet3") == "convnet3" else {}
        published = (
            pub.get("DM", "")
            if r["name"].startswith("DM")
            else (pub.get("random real", "") if r["name"] == "random real (float32)" else "")
        )
        distil = f"{r['distill_seconds']:.0f}" if r.get("distill_seconds") is not None else "-"
        if r.get("pretrain_seconds") is not None:
            distil += f" ({r['pretrain_seconds']:.0f} pre-training + {r['finetune_seconds']:.0f} fine-tuning)"
        per_class = f" ({r['images_per_class']}/class, {r['storage']})" if "images_per_class" in r else ""
        if "priors_per_class" in r:
            per_class = (
                f" ({r['samples_per_class']}/class drawn from {r['priors_per_class']} priors/class, "
                f"latent {r['latent_dim']}, decoder width {r['decoder_width']}; decodes "
                f"{r['decode_images_per_second_cpu']} img/s on CPU)"
            )
        if "generator_width" in r:
            per_class = (
                f" ({r['samples_per_class']}/class sampled from a generator of width "
                f"{r['generator_width']}, noise {r['noise_dim']}, class embedding {r['embed_dim']}; "
                f"decodes {r['decode_images_per_second_cpu']} img/s on CPU)"
            )
        student = sum(r["student_seconds"]) / len(r["student_seconds"])
        count = "" if len(r["accuracies"]) == results["runs"] else f" (n = {len(r['accuracies'])})"
        lines.append(
            f"| {r['ipc']} ({r.get('budget', '')} B) | {r['name']} | {r.get('run', 1)} | {r['bytes']} | "
            f"{r['images']}{per_class} | "
            f"{distil} | {student:.0f} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f}{count} | {published} |"
        )
    lines += ranking_table(results["rows"])
    results.setdefault("series_start", series_start(results))
    finished = {(r["ipc"], r["name"]) for r in series_rows(results)}
    partial = results.get("partial", {})
    pending = [
        row_key(ipc, name)
        + (
            f" ({len(partial[row_key(ipc, name)]['accuracies'])} of "
            f"{partial[row_key(ipc, name)].get('runs', results['runs'])} "
            "students done)"
            if row_key(ipc, name) in partial
            else ""
        )
        for ipc, name in results.get("planned", [])
        if (ipc, name) not in finished
    ]
    if pending:
        lines += ["", f"**Not yet measured** (the run was interrupted; `--resume` continues it): {'; '.join(pending)}."]
    lines += [
        "",
        'Published Fashion-MNIST ConvNet-3 figures (../shared/background.md; "recalled" ones are unverified, and '
        "papers mostly report the best epoch over float32 images at IPC × K images, not whole files):",
        "",
        "| method | IPC 1 | IPC 10 | IPC 50 |",
        "|---|---|---|---|",
    ]
    for method in ("random real", "DC", "DSA", "DM", "MTT", "DANCE", "FreD (storage counted)", "IDC (storage counted)"):
        lines.append(f"| {method} | " + " | ".join(PUBLISHED[i][method] for i in (1, 10, 50)) + " |")
    lines += [
        "",
        "Earlier measured baseline on this kind of machine (background.md, one student, final epoch): "
        "IPC 1 budget: float32 51.0 %, raw uint8 67.3 %, JPEG q50 70.3 %; IPC 10 budget: float32 73.8 %, "
        "raw uint8 83.0 %, JPEG q50 83.1 %.",
        "",
    ]
    return "\n".join(lines)


def full_data_accuracy() -> tuple[float, str] | None:
    """Fashion-MNIST's full-data ConvNet-3 accuracy and how it was measured (benchmarks/full-data.json)."""
    path = HERE / "full-data.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    row = next((r for r in rows if (r["dataset"], r["model"]) == ("fashion-mnist", "convnet3")), None)
    return None if row is None else (row["accuracy"], f"`{row['command']}`, {row['epochs']} epochs, {row['date']}")


def ranking_table(rows: list[dict]) -> list[str]:
    """DD-Ranking's metrics (d3codec.evaluation.ranking) of every archive row: HLR from the same images' hard-label row,
    IOR against random real PNG images in the same bytes with the same labels (the same labeller online, or
    hard labels for rows of hard or stored soft labels)."""
    full = full_data_accuracy()
    out = []
    for r in rows:
        if r.get("build") is None or r["name"].startswith("random real") or r.get("model", "convnet3") != "convnet3":
            continue
        same_build = [x for x in rows if x["ipc"] == r["ipc"] and x.get("build") == r["build"]]
        hard = r if r.get("targets") == "hard" else next((x for x in same_build if x.get("targets") == "hard"), None)
        prefix = "random real (PNG) + the same labeller" if r.get("targets") == "online" else "random real (PNG)"
        random = next(
            (
                x
                for x in rows
                if x["ipc"] == r["ipc"]
                and x["name"] == prefix
                or x["ipc"] == r["ipc"]
                and x["name"].startswith(prefix + " w")
            ),
            None,
        )
        if hard is None or random is None:
            continue
        ranking = Ranking(full[0] if full else None, hard["mean"], r["mean"], random["mean"], random["name"])
        hlr = "-" if ranking.hlr is None else f"{100 * ranking.hlr:.2f}"
        lrs = "-" if ranking.lrs is None else f"{100 * ranking.lrs:.2f}"
        out.append(
            f"| {r['ipc']} | {r['name']} | {100 * r['mean']:.2f} | {100 * hard['mean']:.2f} | "
            f"{random['name']}: {100 * random['mean']:.2f} | {hlr} | {100 * ranking.ior:+.2f} | {lrs} |"
        )
    if not out:
        return []
    source = f"{100 * full[0]:.2f} %, measured by {full[1]}" if full else "not measured"
    return [
        "",
        "DD-Ranking's metrics (d3codec.evaluation.ranking; in points, mean accuracies): HLR = full-data accuracy − the "
        "archive's images with hard labels (lower is better); IOR = the row − random real PNG images in the same "
        "bytes with the same labels (higher is better); LRS = label-robust score (×100). Full-data ConvNet-3 "
        f"accuracy: {source}.",
        "",
        "| IPC | row | accuracy % | its images, hard labels % | random real, same labels % | HLR | IOR | LRS |",
        "|---|---|---|---|---|---|---|---|",
        *out,
    ]


def main() -> None:
    keep_freed_memory()  # and every worker, through compress and train_student (d3codec.util.runtime)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--preset", default="fast")
    p.add_argument(
        "--real-side-ipc",
        type=int,
        nargs="*",
        default=[1],
        help="IPC budgets at which DM also runs with 256 real images per class per iteration",
    )
    p.add_argument(
        "--methods",
        nargs="*",
        default=["dm", "d3", "d2m"],
        choices=METHODS,
        help="distillation methods (the random-real rows always run)",
    )
    p.add_argument(
        "--d2m-samples-per-class",
        type=int,
        nargs="+",
        default=[1, 10, 50, 100],
        help="one D2M row per number: images sampled per class from the same archive",
    )
    p.add_argument(
        "--d2m-soft-labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store the teacher in the D2M archive (default: the preset's choice); with it, rows of the "
        "same samples under hard labels and of random real images under the teacher's labels",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=["convnet3"],
        choices=list(MODEL_NAMES),
        help="student models; rows of other models than ConvNet-3 (cross-architecture) are named "
        "'... → MODEL'. A ResNet-18 student costs about 13 ConvNet-3 students: use a GPU",
    )
    p.add_argument(
        "--no-labels-ipc",
        type=int,
        nargs="*",
        default=[1, 10],
        help="IPC budgets at which D3 also runs with soft labels off",
    )
    p.add_argument(
        "--d3-samples-per-class",
        nargs="+",
        default=["40"],
        help="images drawn per class from D3 archives: one number, or one per --ipc; 'priors': one per prior",
    )
    p.add_argument(
        "--labeller-width",
        type=int,
        default=16,
        help="each method also with a stored int8 labeller of this width (rows: online, and its images "
        "with hard labels), and random real PNG and JPEG images with the same labeller; 0: none",
    )
    p.add_argument("--labeller-epochs", type=float, default=LabellerConfig.epochs, help="the labeller's epochs")
    p.add_argument(
        "--formations",
        nargs="*",
        default=["lowres:2", "dct:2"],
        help="DM also through these formations: KIND:FACTOR[:MATCHING][@IPC][!] (d3codec.methods.pixel."
        "formation; MATCHING dm or dance; @IPC: at that budget only; !: without the labeller twin)",
    )
    p.add_argument(
        "--default-row",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a row of the archive `d3 compress fashion-mnist --ipc N` writes (d3codec.encode.defaults)",
    )
    p.add_argument(
        "--matching",
        choices=MATCHINGS,
        default=None,
        help="the matching of the D3 and D2M rows (default: their presets'); DM's rows name theirs in "
        "--formations, and its plain row keeps DM's own",
    )
    p.add_argument(
        "--labeller-twins",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each method's row also with a stored labeller of --labeller-width (the real-image rows "
        "with the same labeller stay)",
    )
    p.add_argument(
        "--real-storages",
        nargs="*",
        default=["float32", "png", "jpeg"],
        choices=["float32", "png", "jpeg"],
        help="random real images stored so, in the whole budget",
    )
    p.add_argument("--threads", type=int, default=None, help="threads per worker (default: cores / --jobs)")
    p.add_argument(
        "--runs-for",
        nargs="*",
        default=[],
        metavar="PATTERN=N",
        help="rows whose name contains PATTERN get N students instead of --runs (the first match counts)",
    )
    p.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY, help="quality of the JPEG baselines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--work", default=str(HERE / "work"))
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--json", default=str(HERE / "results-fashion-mnist.json"))
    p.add_argument("--note", default="", help="said of this run in RESULTS.md (e.g. what else shared the machine)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes; builds and students run in parallel, each with cores/jobs threads",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with the interrupted run in --json: keep its finished rows and students, run the rest",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="start a new run in --json, keeping the rows of its earlier runs in the table",
    )
    p.add_argument("--render-only", action="store_true", help="rewrite --out from --json without running anything")
    p.add_argument("--plan", action="store_true", help="list the rows and their students, and run nothing")
    args = p.parse_args()
    if len(args.d3_samples_per_class) not in (1, len(args.ipc)) or not all(
        v == "priors" or v.isdigit() and int(v) > 0 for v in args.d3_samples_per_class
    ):
        p.error("--d3-samples-per-class takes one positive number (or 'priors'), or one per --ipc")
    if args.plan:
        for ipc in args.ipc:
            for name in row_names(ipc, args):
                print(f"IPC {ipc}: {name} ({row_runs(name, args)} × {args.epochs} epochs)")
        return
    if args.render_only:
        results = json.loads(Path(args.json).read_text())
        results.setdefault("planned", [[ipc, name] for ipc in args.ipc for name in row_names(ipc, args)])
        save(results, args)
        return
    run(args)


if __name__ == "__main__":
    main()
