"""``d3``: compress a dataset into a .d3 archive, inspect it, expand it, evaluate it.

A thin layer over the library: each command parses options, calls d3codec, and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from d3codec.cli.compress import CompressGroup
from d3codec.cli.options import LIMIT_FIELDS, count, decode_limit_options, decode_limits, fail
from d3codec.decode.expand import MAX_OUTPUT_BYTES, MAX_OUTPUT_FILES
from d3codec.encode.pipeline import MAX_BUDGET_BYTES as MAX_BUDGET
from d3codec.encode.pipeline import MAX_SEED
from d3codec.errors import D3Error
from d3codec.evaluation.students import JPEG_QUALITY
from d3codec.format.text import safe_text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="d3codec")
def main() -> None:
    """d3codec: dataset distillation into small, safe .d3 archives."""
    from d3codec.util.runtime import cuda_debug_from_environment, keep_freed_memory

    keep_freed_memory()  # every command: freed tensor buffers are reused (d3codec.util.runtime)
    try:
        cuda_debug_from_environment()  # D3CODEC_SYNC_DEBUG=warn: report host syncs of a CUDA run
    except ValueError as e:
        fail(e)


main.add_command(CompressGroup("compress"))


@main.command()
@click.argument("archives", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Merged archive to write.")
@click.option(
    "--budget",
    type=count(1, MAX_BUDGET),
    help="Bytes the merged file may take (default: the parts' federated budget, else the sum of their budgets).",
)
@decode_limit_options
def merge(archives, output, budget, **limits):
    """Join d3 ARCHIVES of disjoint classes (same image shape) into one, classes in the order given."""
    from d3codec.methods.d3.merge import merge_archives

    try:
        result = merge_archives(list(archives), output, budget, decode_limits(**limits))
    except (D3Error, ValueError, OSError) as e:
        fail(e)
    click.echo(
        f"wrote {result.path}: {result.classes} classes from {len(archives)} archives, {result.file_bytes} "
        f"bytes of a {result.budget}-byte budget"
    )


@main.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--meta",
    "show_meta",
    is_flag=True,
    help="Also print the metadata (the method's parameters, the dataset's classes, the run's statistics).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print summary, metadata and byte table as JSON (escaped, complete)."
)
def info(archive, show_meta, as_json):
    """Summarise ARCHIVE in one line, then its byte table (--meta: its metadata too).

    Also lists the sections of a bare container (written with d3codec.write_archive, no dataset
    metadata). Strings from the archive are shown with control characters escaped and cut after 200
    characters (their length stated), lists after 20 items; --json prints everything, JSON-escaped."""
    from d3codec.format.accounting import ipc_equivalent
    from d3codec.format.meta import byte_table, open_archive_or_container, summary
    from d3codec.format.text import safe_value

    try:
        reader, meta = open_archive_or_container(archive)
    except D3Error as e:
        fail(e)
    with reader:
        version = f"{reader.version[0]}.{reader.version[1]}"
        budget = (meta.get("budget") or {}).get("bytes") if meta else None  # an integer or None (checked)
        rows = byte_table(reader, budget)
        line = (
            summary(meta, reader.file_size)
            if meta
            else f"a bare container of {len(reader.sections)} section(s), {reader.file_size:,} bytes "
            "(no dataset metadata)"
        )
        if as_json:  # ensure_ascii: every control or non-ASCII character is a \u escape
            ds = meta["dataset"] if meta else None
            ipc_eq = ipc_equivalent(reader.file_size, len(ds["classes"]), tuple(ds["image_shape"])) if ds else None
            click.echo(
                json.dumps(
                    {
                        "summary": line,
                        "meta": meta,
                        "bytes": rows,
                        "file_bytes": reader.file_size,
                        "ipc_equivalent": ipc_eq,
                        "version": list(reader.version),
                    },
                    indent=2,
                    ensure_ascii=True,
                )
            )
            return
        click.echo(f"{safe_text(archive, 300)} (d3 format {version}): {line}")
        if show_meta and meta:
            click.echo(json.dumps(safe_value(meta), indent=2, sort_keys=True, ensure_ascii=False))  # printable already
        click.echo("")
        click.echo(
            f"{'section':<18} {'codec':>5} {'raw bytes':>11} {'stored bytes':>13} {'of file':>8} {'of budget':>10}"
        )
        for r in rows:
            share = f"{100 * r['budget_share']:.2f} %" if r["budget_share"] is not None else "-"
            click.echo(
                f"{r['name']:<18} {r['codec']:>5} {r['raw']:>11} {r['stored']:>13} "
                f"{100 * r['file_share']:>6.2f} % {share:>10}"
            )
        if meta and not show_meta:
            click.echo("\n--meta prints the metadata; IPC-equivalent: float32 images per class in the same bytes")


@main.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the checks as JSON: {archive, ok, checks: [[step, "
    "detail], ...], failure: [step, reason] or null} (the exit status is the same).",
)
@decode_limit_options
def verify(archive, as_json, **limits):
    """Check every checksum, size and the byte accounting of ARCHIVE, and decode its contents.

    The decode budget is checked from the declared shapes before any decoder runs: an archive whose
    default expansion would pass the limits fails. Exits 0 when all checks pass, 1 with the reason of
    the first that fails."""
    from d3codec.decode.verify import verify_archive

    try:
        result = verify_archive(archive, decode_limits(**limits))
    except OSError as e:
        fail(e)
    if as_json:  # ensure_ascii: every control or non-ASCII character of the archive's is a \u escape
        click.echo(
            json.dumps(
                {"archive": str(archive), "ok": result.ok, "checks": result.checks, "failure": result.failure},
                indent=2,
                ensure_ascii=True,
            )
        )
        sys.exit(0 if result.ok else 1)
    for name, detail in result.checks:
        click.echo(f"ok      {name}: {safe_text(detail, 2000)}")
    if not result.ok:
        name, reason = result.failure
        click.echo(f"FAILED  {name}: {safe_text(reason, 2000)}")
        sys.exit(1)
    click.echo(f"{safe_text(archive, 300)}: verified")


@main.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Folder to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "pt", "safetensors", "ddranking"]),
    default="png",
    show_default=True,
    help="png: class-per-folder images; pt / safetensors: images, hard labels and (where "
    "the archive has them) soft labels as tensors; ddranking: what DD-Ranking's evaluators take (normalised "
    "images, class-major, soft labels as logits, and ddranking.json).",
)
@click.option("--grid", type=click.Path(dir_okay=False), help="Also write one picture, a row per class.")
@click.option(
    "--grid-columns",
    type=count(),
    default=20,
    show_default=True,
    help="Images per class in the grid, "
    "the first of each class (any number; the message says how many of how many it shows).",
)
@click.option(
    "--grid-scale",
    type=count(1, 64),
    default=1,
    show_default=True,
    help="Enlarge each image this many times in the grid (nearest neighbour).",
)
@click.option(
    "--grid-names/--no-grid-names", default=True, show_default=True, help="Write each class's name left of its row."
)
@click.option(
    "--max-grid-pixels",
    type=count(),
    help="The grid's largest canvas, height × width "
    "[default: 134217728]; a larger one is refused (use fewer --grid-columns).",
)
@click.option(
    "--samples-per-class",
    type=count(),
    help="d3 and d2m archives: images to draw per class (default: d3 one per prior, d2m the archive's, "
    "at most 64 per IPC-equivalent of the file).",
)
@click.option(
    "--sample-seed",
    type=count(0, (1 << 63) - 1),
    default=0,
    show_default=True,
    help="d3 and d2m archives: seed of the draw.",
)
@click.option("--device", default="cpu", show_default=True, help="Where d3 and d2m archives are decoded.")
@click.option(
    "--max-files",
    type=count(),
    default=MAX_OUTPUT_FILES,
    show_default=True,
    help="The most files -o may write; more is refused before anything is written.",
)
@click.option(
    "--max-output-bytes",
    type=count(),
    default=MAX_OUTPUT_BYTES,
    show_default=True,
    help="The most bytes -o may write (PNG files counted at their pixels' bytes); more is refused before "
    "anything is written, as is more than the disk has free.",
)
@decode_limit_options
def expand(
    archive,
    output,
    fmt,
    grid,
    grid_columns,
    grid_scale,
    grid_names,
    max_grid_pixels,
    samples_per_class,
    sample_seed,
    device,
    **limits,
):
    """Expand ARCHIVE into images or tensors.

    What the expansion would cost is checked before it is made (the decode limits below, and the files
    and bytes it would write): an archive or a --samples-per-class over them is refused with the figure
    and the option that raises it. d3 and d2m archives are decoded a batch at a time for PNG folders
    and grids; tensor formats hold the whole draw in memory."""
    from d3codec.decode.dataset import D3Dataset
    from d3codec.decode.expand import check_output, grid_image, write_ddranking, write_image_folder, write_tensors
    from d3codec.nn.models import resolve_device

    if output is None and grid is None:
        raise click.UsageError("give -o DIR, --grid FILE.png, or both")
    written = limits.pop("max_files"), limits.pop("max_output_bytes")  # what -o may write; the rest: decoding
    try:
        ds = D3Dataset(
            archive,
            samples_per_class=samples_per_class,
            seed=sample_seed,
            device=resolve_device(device),
            limits=decode_limits(**limits),
        )
        if output is not None:
            check_output(ds, fmt, output, *written)
        picture = (
            grid_image(ds, grid_columns, max_pixels=max_grid_pixels, scale=grid_scale, names=grid_names)
            if grid is not None
            else None
        )
        if output is not None:
            if fmt == "png":
                n = write_image_folder(ds, output)
                click.echo(f"wrote {n} PNG images in {len(ds.classes)} class folders under {safe_text(output, 300)}")
            else:
                paths = write_ddranking(ds, output) if fmt == "ddranking" else write_tensors(ds, output, fmt)
                click.echo(f"wrote {safe_text(', '.join(map(str, paths)), 600)}")
        if picture is not None:
            picture.save(grid)
            most = int(ds.labels.bincount(minlength=len(ds.classes)).max()) if len(ds) else 0
            click.echo(
                f"wrote {safe_text(grid, 300)}: {len(ds.classes)} rows, the first {min(grid_columns, most)} of "
                f"up to {most} images per class ({picture.width}×{picture.height} pixels)"
            )
    except (D3Error, ValueError, OSError) as e:
        fail(e)


@main.command("eval")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--model",
    type=click.Choice(["convnet3", "resnet18", "mlp"]),
    default="convnet3",
    show_default=True,
    help="Student network (resnet18: torchvision's, adapted to small images).",
)
@click.option("--epochs", type=count(), default=300, show_default=True)
@click.option("--runs", type=count(), default=3, show_default=True, help="Students per row (mean ± std).")
@click.option(
    "--baseline",
    type=click.Choice(["none", "random-real"]),
    default="none",
    show_default=True,
    help="random-real: also train on random real images in the same bytes (float32, PNG, JPEG) and, for "
    "an archive with a labeller, on PNG and JPEG images in the bytes the labeller leaves, labelled online "
    "by the same labeller (the fair baseline).",
)
@click.option(
    "--jpeg-quality",
    type=click.IntRange(1, 95),
    default=JPEG_QUALITY,
    show_default=True,
    help="The quality of the JPEG baseline.",
)
@click.option(
    "--ranking",
    is_flag=True,
    help="Also report DD-Ranking's metrics: hard-label recovery (full-data "
    "accuracy less the archive's with hard labels), improvement over random real images in the same bytes "
    "with the same labels, and the label-robust score; trains the rows they need.",
)
@click.option(
    "--dataset",
    help="Real dataset for the test split: a registered name or a class-per-folder tree "
    "(default: the one the archive names, if registered, or a folder of that name under --data-root).",
)
@click.option("--data-root", type=click.Path(file_okay=False), help="Where the real data is.")
@click.option("--seed", type=count(0, MAX_SEED), default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--json",
    "json_out",
    is_flag=False,
    flag_value="-",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Print the results as JSON (alone on stdout: progress goes to stderr); --json FILE writes them "
    "to FILE instead.",
)
@click.option(
    "--samples-per-class",
    type=count(),
    help="d3 and d2m archives: images to draw per class (default: d3 one per prior, d2m the archive's, "
    "at most 64 per IPC-equivalent of the file).",
)
@click.option(
    "--sample-seed",
    type=count(0, MAX_SEED),
    default=0,
    show_default=True,
    help="d3 and d2m archives: seed of the draw.",
)
@click.option(
    "--resample-every-epoch",
    is_flag=True,
    help="d3 and d2m archives: fresh samples for every student epoch (DiM), same count per class.",
)
@click.option(
    "--training",
    type=click.Choice(["auto", "replay", "standard", "both"]),
    default="auto",
    show_default=True,
    help="replay: train by the archive's own schedule (bptt archives: its network, "
    "learned step sizes and θ₀); standard: the protocol above (--model, --epochs); auto: replay where "
    "the archive has a schedule; both: a row each.",
)
@click.option(
    "--labels",
    type=click.Choice(["auto", "online", "stored", "hard"]),
    default="auto",
    show_default=True,
    help="What the archive's students learn from: online, its stored labeller's soft labels of every "
    "augmented batch; stored, the soft labels stored with its images; hard, the classes; auto: online "
    "where the archive has a labeller, else stored.",
)
@click.option(
    "--compile",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="torch.compile the students: about 1.4 times as fast a step on a CPU, after 5 to 30 s of compiling "
    "(needs a C++ compiler; falls back to eager). auto: on for students of at least 100 000 image-steps.",
)
@click.option(
    "--quiet",
    is_flag=True,
    help="No progress (each student's epochs show otherwise: a bar in a terminal, a line every 30 s in a log).",
)
@decode_limit_options
def evaluate_cmd(archive, dataset, data_root, device, json_out, quiet, **options):
    """Train fresh students on ARCHIVE and report final test accuracy, bytes and training time
    (d3codec.evaluate in Python)."""
    from d3codec.evaluation.protocol import EvalProtocol, evaluate

    limits = decode_limits(**{name: options.pop(name) for name in LIMIT_FIELDS})
    log = (lambda m: click.echo(m, err=True)) if not quiet else None  # noqa: E731
    try:
        result = evaluate(
            archive,
            EvalProtocol(**options),
            dataset=dataset,
            data_root=data_root,
            device=device,
            limits=limits,
            progress=not quiet,
            log=log,
        )
    except (D3Error, ValueError, OSError) as e:
        fail(e)
    if json_out == "-":
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(result.header())
    for r in result.rows:
        click.echo("  " + r.summary())
    if result.ranking is not None:
        click.echo("  " + result.ranking.summary())
    if json_out:
        Path(json_out).write_text(json.dumps(result.to_json(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
