"""``d3``: compress a dataset into a .d3 archive, inspect it, expand it, evaluate it.

A thin layer over the library: each command parses options, calls d3codec, and prints.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from d3codec.compress import MAX_BUDGET_BYTES as MAX_BUDGET
from d3codec.compress import MAX_SEED
from d3codec.errors import D3Error
from d3codec.text import safe_text


def _fail(error: Exception) -> None:
    # one line, printable: an error may quote an archive's own strings
    raise click.ClickException(safe_text(" ".join(str(error).split()), 2000))


class OptionValueError(click.BadParameter):
    """An option value out of its range: one line, exit status 1 (as every other refusal of ``d3``)."""

    exit_code = 1

    def show(self, file=None) -> None:
        hint = f" (d3 {self.ctx.command.name} -h lists the options)" if self.ctx is not None and self.ctx.command else ""
        click.echo(f"Error: {safe_text(self.format_message(), 500)}{hint}", file=file, err=True)


class PositiveFinite(click.ParamType):
    """A float that is finite and above ``low`` (``inf`` and ``nan`` refused), at most ``high``."""

    name = "number"

    def __init__(self, low: float = 0.0, high: float = float("inf"), inclusive: bool = False):
        self.low, self.high, self.inclusive = low, high, inclusive

    def fail(self, message, param=None, ctx=None):
        raise OptionValueError(message, ctx=ctx, param=param)

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{safe_text(value, 40)} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        above = number >= self.low if self.inclusive else number > self.low
        if not above or number > self.high:
            bound = "at least" if self.inclusive else "above"
            limit = f" and at most {self.high:g}" if math.isfinite(self.high) else ""
            self.fail(f"{value} must be {bound} {self.low:g}{limit}", param, ctx)
        return number

    def __repr__(self) -> str:
        return "NUMBER"


class Count(click.IntRange):
    """An integer in [low, high], refused in one line (OptionValueError) before any work."""

    def fail(self, message, param=None, ctx=None):
        raise OptionValueError(safe_text(message, 300), ctx=ctx, param=param)


def count(low: int = 1, high: int | None = None) -> click.IntRange:
    """An integer option's range (click refuses values outside it before any work)."""
    return Count(low, high)


def decode_limit_options(command):
    """--max-bytes, --max-parameters, --max-macs-per-image, --max-section-bytes: the decode budget
    (d3codec.limits)."""
    from d3codec.limits import DEFAULT_LIMITS as L

    command = click.option("--max-section-bytes", type=count(), help=f"Decode limit: the decoded size of any "
                           f"one section [default: {L.max_section_bytes}].")(command)
    command = click.option("--max-macs", type=count(), help=f"Decode limit: multiply-adds of the whole draw "
                           f"[default: {L.max_macs}].")(command)
    command = click.option("--max-macs-per-image", type=count(), help=f"Decode limit: multiply-adds to decode one "
                           f"image [default: {L.max_macs_per_image}]; raise it only for an archive you trust.")(command)
    command = click.option("--max-parameters", type=count(), help=f"Decode limit: values of the archive's networks "
                           f"and tables once decoded [default: {L.max_parameters}].")(command)
    return click.option("--max-bytes", type=count(), help=f"Decode limit: bytes the decoded images, labels and soft "
                        f"labels may take [default: {L.max_bytes}].")(command)


def decode_limits(max_bytes, max_parameters, max_macs_per_image, max_section_bytes, max_macs):
    from d3codec.limits import DEFAULT_LIMITS

    return DEFAULT_LIMITS.with_overrides(max_bytes=max_bytes, max_parameters=max_parameters,
                                         max_macs_per_image=max_macs_per_image, max_section_bytes=max_section_bytes,
                                         max_macs=max_macs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="d3codec")
def main() -> None:
    """d3codec: dataset distillation into small, safe .d3 archives."""
    from d3codec.runtime import keep_freed_memory

    keep_freed_memory()  # every command: freed tensor buffers are reused (d3codec.runtime)


@main.command()
@click.argument("dataset")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Archive to write (.d3).")
@click.option("--method", type=click.Choice(["pixel", "d3", "d2m"]), default="pixel", show_default=True,
              help="pixel: learn the images (DM or BPTT); d3: per-class priors, a decoder and soft labels; d2m: a "
              "class-conditional generator.")
@click.option("--objective", type=click.Choice(["dm", "bptt"]), default="dm", show_default=True,
              help="Pixel objective: dm (distribution matching) or bptt (Wang et al. 2018: images and step sizes "
              "learned through unrolled training; the archive carries the schedule).")
@click.option("--init", "init_mode", type=click.Choice(["fixed", "random"]),
              help="bptt: one stored initialisation θ₀ (counted in the budget) or a fresh one every step "
              "(default fixed).")
@click.option("--network", type=click.Choice(["lenet", "convnet3"]), help="bptt: the unrolled network (default lenet).")
@click.option("--inner-steps", type=count(1, 100_000), help="bptt: GD steps an epoch, each on its own share of the images "
              "(default: up to 10, dividing the images per class).")
@click.option("--inner-epochs", type=count(1, 100_000),
              help="bptt: passes over the steps (default 3, or more for at least 10 steps in all).")
@click.option("--ipc", type=PositiveFinite(), help="Budget as N float32 images per class: N·K·C·H·W·4 bytes "
              "(N > 0; the bytes at most 4 GiB).")
@click.option("--budget", type=count(1, MAX_BUDGET), help="Budget in bytes, 1 to 4 GiB; the whole file counts.")
@click.option("--preset", type=click.Choice(["fast", "paper"]), default="fast", show_default=True,
              help="fast: minutes on a CPU; paper: the paper's settings, for a GPU.")
@click.option("--iterations", type=count(), help="Override the preset's iteration count (at least 1).")
@click.option("--real-per-class", type=count(), help="Real images per class per iteration (DM paper: 256).")
@click.option("--storage-dtype", type=click.Choice(["auto", "uint8", "float16", "float32"]), default="auto",
              show_default=True, help="pixel: how images are stored; auto picks uint8 (most images per byte).")
@click.option("--images-per-class", type=count(), help="pixel: fix the image count instead of filling the budget.")
@click.option("--subtasks", type=count(), help="d3: split the classes into K groups, each with its own decoder.")
@click.option("--workers", type=count(), help="d3: distil the subtasks on N local processes (torch.distributed).")
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False),
              help="d3 and d2m: a ConvNet-3 teacher (.safetensors) instead of training one.")
@click.option("--latent-dim", type=count(1, 4096), help="d3: latent size (default by the budget rule).")
@click.option("--priors-per-class", type=count(1, 1_000_000), help="d3: priors per class (default: fill the budget).")
@click.option("--decoder-width", type=count(1, 4096), help="d3: decoder channels (default by the budget rule).")
@click.option("--decoder-dtype", type=click.Choice(["int8", "float16"]), help="d3: how decoder weights are stored.")
@click.option("--prior-dtype", type=click.Choice(["float16", "int8"]),
              help="d3: how prior means and log-variances are stored (int8: about twice the priors).")
@click.option("--soft-labels/--no-soft-labels", default=None,
              help="d3: store a teacher's soft label per prior; d2m: store the teacher itself (in the budget), "
              "so that every sample drawn gets the teacher's soft label.")
@click.option("--generator", type=click.Path(exists=True, dir_okay=False),
              help="d2m: fine-tune this pre-trained generator (safetensors) instead of pre-training one.")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="pixel: the checkpoint a killed encode resumes from by running the same command again "
              "(default: OUTPUT.ckpt.safetensors, written every 5 minutes, deleted once the archive is written); "
              "d3: each subtask i checkpoints to the same name with .g{i} before its suffix; "
              "d2m: the pre-training checkpoint (default: OUTPUT.pretrain.safetensors, kept for another "
              "fine-tuning), while fine-tuning checkpoints to OUTPUT.ckpt.safetensors.")
@click.option("--resume", "resume", flag_value="resume", default=None,
              help="Insist on going on from the checkpoint (refused when there is none). Without --resume or "
              "--restart, a checkpoint of the same run is taken up and one of another run is refused.")
@click.option("--restart", "resume", flag_value="restart",
              help="Delete this output's checkpoints first and distil from scratch.")
@click.option("--pretraining", type=click.Choice(["gan", "vae"]),
              help="d2m: pre-train the generator as a conditional GAN or as the decoder of a conditional VAE.")
@click.option("--pretrain-iterations", type=count(), help="d2m: pre-training iterations.")
@click.option("--task-balance", type=PositiveFinite(0.0, 1e6, inclusive=True), help="d2m: weight of prediction matching against embedding matching.")
@click.option("--generator-width", type=count(4, 4096), help="d2m: generator channels (default: fill the budget).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Where the real data is (or goes).")
@click.option("--resolution", type=count(1, 4096), help="Side length for imagenet and folder datasets (default 64).")
@click.option("--seed", type=count(0, MAX_SEED), default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def compress(dataset, output, method, objective, init_mode, network, inner_steps, inner_epochs, ipc, budget, preset,
             iterations, real_per_class, storage_dtype,
             images_per_class, subtasks, workers, teacher, latent_dim, priors_per_class, decoder_width, decoder_dtype,
             prior_dtype, soft_labels, generator, checkpoint, resume, pretraining, pretrain_iterations, task_balance, generator_width,
             data_root, resolution, seed, device, quiet):
    """Distil DATASET (fashion-mnist, mnist, cifar10, cifar100, imagenet, or a class-per-folder path).

    Under torchrun (or with --workers N) a d3 run spreads its subtasks over the ranks."""
    from d3codec.compress import compress as run_compress
    from d3codec.data import load_dataset
    from d3codec.federated import barrier, compress_with_workers, join_process_group, rank, world_size
    from d3codec.models import resolve_device

    try:
        if (ipc is None) == (budget is None):
            raise click.UsageError("give exactly one of --ipc N or --budget BYTES")
        only = {"d3": {"--subtasks": subtasks, "--workers": workers, "--latent-dim": latent_dim,
                       "--priors-per-class": priors_per_class, "--decoder-width": decoder_width,
                       "--decoder-dtype": decoder_dtype, "--prior-dtype": prior_dtype},
                "d2m": {"--generator": generator, "--pretraining": pretraining,
                        "--pretrain-iterations": pretrain_iterations, "--task-balance": task_balance,
                        "--generator-width": generator_width},
                "pixel": {"--images-per-class": images_per_class}}
        hints = {"--images-per-class": {"d3": "; use --priors-per-class", "d2m": "; d2m archives draw any count "
                                        "at expansion (--samples-per-class)"}}
        given = [k for k, v in {"--init": init_mode, "--network": network, "--inner-steps": inner_steps,
                                "--inner-epochs": inner_epochs}.items() if v is not None]
        if given and (method, objective) != ("pixel", "bptt"):
            raise click.UsageError(f"{', '.join(given)} apply to --method pixel --objective bptt")
        if objective != "dm" and method != "pixel":
            raise click.UsageError("--objective applies to --method pixel")
        for owner, options in only.items():
            given = [k for k, v in options.items() if v is not None]
            if given and method != owner:
                hint = hints.get(given[0], {}).get(method, "")
                raise click.UsageError(f"{', '.join(given)} apply to --method {owner}{hint}")
        if method == "pixel" and (teacher is not None or soft_labels is not None):
            raise click.UsageError(f"{'--teacher' if teacher is not None else '--soft-labels'} applies to "
                                   "--method d3 and d2m")
        dev = join_process_group(resolve_device(device))
        real = load_dataset(dataset, data_root, resolution)
        run_checkpoint = checkpoint or f"{output}.ckpt.safetensors"  # pixel and d3 (d2m: below)
        if method == "pixel" and objective == "bptt":
            from d3codec.methods.bptt import BPTTEncoder

            encoder = BPTTEncoder.from_options(preset, run_checkpoint,
                                               iterations=iterations, real_per_class=real_per_class,
                                               storage_dtype=storage_dtype, images_per_class=images_per_class,
                                               init=init_mode, network=network, inner_steps=inner_steps,
                                               inner_epochs=inner_epochs)
        elif method == "pixel":
            from d3codec.methods.pixel import PixelEncoder

            encoder = PixelEncoder.from_options(preset, run_checkpoint,
                                                iterations=iterations, real_per_class=real_per_class,
                                                storage_dtype=storage_dtype, images_per_class=images_per_class)
        elif method == "d2m":
            from d3codec.methods.d2m import D2MEncoder, load_generator
            from d3codec.teacher import load_teacher

            encoder = D2MEncoder.from_options(
                preset, load_teacher(teacher, real.image_shape, real.num_classes, dev) if teacher else None,
                load_generator(generator, real.num_classes, real.image_shape) if generator else None,
                checkpoint or f"{output}.pretrain.safetensors", f"{output}.ckpt.safetensors", iterations=iterations,
                real_per_class=real_per_class, pretraining=pretraining, pretrain_iterations=pretrain_iterations,
                task_balance=task_balance, generator_width=generator_width, soft_labels=soft_labels)
        else:
            from d3codec.methods.d3 import D3Encoder
            from d3codec.teacher import load_teacher

            loaded = load_teacher(teacher, real.image_shape, real.num_classes, dev) if teacher else None
            encoder = D3Encoder.from_options(preset, loaded, run_checkpoint,
                                             iterations=iterations, real_per_class=real_per_class,
                                             subtasks=subtasks, latent_dim=latent_dim, priors_per_class=priors_per_class,
                                             decoder_width=decoder_width, decoder_dtype=decoder_dtype,
                                             prior_dtype=prior_dtype, soft_labels=soft_labels)
        found = encoder.checkpoint_files()
        if resume == "resume" and not found:
            raise click.UsageError(f"--resume: there is no checkpoint of {output} to go on from; leave --resume out "
                                   "to start")
        if resume == "restart":
            if rank() == 0:
                for path in found:
                    path.unlink(missing_ok=True)
            barrier()  # no rank starts before they are gone
            found = []
        if found and rank() == 0:
            click.echo(f"resuming from {', '.join(map(str, found))} (--restart to start afresh)", err=True)
        if rank() == 0:
            click.echo(f"{real.name}: {len(real.train_targets)} training images, {real.num_classes} classes, "
                       f"shape {real.image_shape}; method {method}, preset {preset}, device {dev}"
                       + (f", {workers} workers" if workers else ""), err=True)
        if workers is not None and workers > 1:
            if world_size() > 1:
                raise click.UsageError("--workers starts its own ranks: leave it out under torchrun")
            compress_with_workers(workers, dataset, output, encoder=encoder, data_root=data_root,
                                  resolution=resolution, ipc=ipc, budget=budget, seed=seed, device=str(dev),
                                  progress=not quiet)
            click.echo(f"wrote {output}: {Path(output).stat().st_size} bytes")
            return
        result = run_compress(real, output, encoder=encoder, ipc=ipc, budget=budget, seed=seed, device=dev,
                              progress=not quiet)
    except (D3Error, ValueError, OSError) as e:
        _fail(e)
    if rank() != 0:
        return
    click.echo(f"wrote {result.path}: {result.file_bytes} bytes of a {result.budget}-byte budget "
               f"({100 * result.file_bytes / result.budget:.1f} %), {describe_plan(result.plan)}, "
               f"distilled in {result.stats.get('distill_seconds', 0):.1f} s")


def describe_plan(plan) -> str:
    if hasattr(plan, "inner_steps"):
        return (f"{plan.images_per_class} {plan.storage_dtype} images per class, {plan.inner_steps} steps × "
                f"{plan.inner_epochs} epochs")
    if hasattr(plan, "images_per_class"):
        return f"{plan.images_per_class} {plan.storage_dtype} images per class"
    if hasattr(plan, "generator_width"):
        return (f"generator {plan.architecture} of width {plan.generator_width} ({plan.weight_dtype}), noise "
                f"{plan.noise_dim}, class embeddings {plan.embed_dim}"
                + (f", a ConvNet-3 teacher of width {plan.teacher_width} for soft labels" if plan.teacher_width else "")
                + f"; draws {plan.samples_per_class} per class by default")
    g = plan.groups[0]
    return (f"{len(plan.groups)} subtask(s), {g.priors_per_class} priors per class, latent {g.latent_dim}, "
            f"decoder width {g.decoder_width} ({plan.decoder_dtype}), {plan.prior_dtype} priors")


@main.command()
@click.argument("archives", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Merged archive to write.")
@click.option("--budget", type=count(1, MAX_BUDGET), help="Bytes the merged file may take (default: the parts' "
              "federated budget, else the sum of their budgets).")
@decode_limit_options
def merge(archives, output, budget, max_bytes, max_parameters, max_macs_per_image, max_section_bytes, max_macs):
    """Join d3 ARCHIVES of disjoint classes (same image shape) into one, classes in the order given."""
    from d3codec.merge import merge_archives

    try:
        result = merge_archives(list(archives), output, budget,
                                decode_limits(max_bytes, max_parameters, max_macs_per_image, max_section_bytes, max_macs))
    except (D3Error, ValueError, OSError) as e:
        _fail(e)
    click.echo(f"wrote {result.path}: {result.classes} classes from {len(archives)} archives, {result.file_bytes} "
               f"bytes of a {result.budget}-byte budget")


@main.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print metadata and byte table as JSON (escaped, complete).")
def info(archive, as_json):
    """Print an archive's metadata and byte table.

    Strings from the archive are shown with control characters escaped and cut after 200 characters
    (their length stated), lists after 20 items; --json prints everything, JSON-escaped."""
    from d3codec.archive import byte_table, open_archive
    from d3codec.budget import ipc_equivalent
    from d3codec.text import safe_value

    try:
        reader, meta = open_archive(archive)
    except D3Error as e:
        _fail(e)
    with reader:
        budget = (meta.get("budget") or {}).get("bytes")  # an integer or None (checked with the metadata)
        rows = byte_table(reader, budget)
        ds = meta["dataset"]
        ipc_eq = ipc_equivalent(reader.file_size, len(ds["classes"]), tuple(ds["image_shape"]))
        if as_json:  # ensure_ascii: every control or non-ASCII character is a \u escape
            click.echo(json.dumps({"meta": meta, "bytes": rows, "file_bytes": reader.file_size,
                                   "ipc_equivalent": ipc_eq, "version": list(reader.version)}, indent=2,
                                  ensure_ascii=True))
            return
        click.echo(f"{safe_text(archive, 300)}: d3 format {reader.version[0]}.{reader.version[1]}, method "
                   f"{safe_text(meta['method'], 60)}")
        click.echo(json.dumps(safe_value(meta), indent=2, sort_keys=True, ensure_ascii=False))  # printable already
        click.echo("")
        click.echo(f"{'section':<18} {'codec':>5} {'raw bytes':>11} {'stored bytes':>13} {'of file':>8} {'of budget':>10}")
        for r in rows:
            share = f"{100 * r['budget_share']:.2f} %" if r["budget_share"] is not None else "-"
            click.echo(f"{r['name']:<18} {r['codec']:>5} {r['raw']:>11} {r['stored']:>13} "
                       f"{100 * r['file_share']:>6.2f} % {share:>10}")
        budget_text = f" of a {budget}-byte budget" if budget else ""
        click.echo(f"\nfile: {reader.file_size} bytes{budget_text}; IPC-equivalent {ipc_eq:.3f} "
                   f"(float32 images per class in the same bytes)")


@main.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@decode_limit_options
def verify(archive, max_bytes, max_parameters, max_macs_per_image, max_section_bytes, max_macs):
    """Check every checksum, size and the byte accounting of ARCHIVE, and decode its contents.

    The decode budget is checked from the declared shapes before any decoder runs: an archive whose
    default expansion would pass the limits fails. Exits 0 when all checks pass, 1 with the reason of
    the first that fails."""
    from d3codec.verify import verify_archive

    try:
        result = verify_archive(archive, decode_limits(max_bytes, max_parameters, max_macs_per_image,
                                                       max_section_bytes, max_macs))
    except OSError as e:
        _fail(e)
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
@click.option("--format", "fmt", type=click.Choice(["png", "pt", "safetensors"]), default="png", show_default=True,
              help="png: class-per-folder images; pt / safetensors: image and label tensors.")
@click.option("--grid", type=click.Path(dir_okay=False), help="Also write one picture, a row per class.")
@click.option("--grid-columns", type=count(), default=20, show_default=True, help="Images per class in the grid.")
@click.option("--max-grid-pixels", type=count(), help="The grid's largest canvas, height × width "
              "[default: 134217728]; a larger one is refused (use fewer --grid-columns).")
@click.option("--samples-per-class", type=count(),
              help="d3 and d2m archives: images to draw per class (default: d3 one per prior, d2m the archive's).")
@click.option("--sample-seed", type=count(0, (1 << 63) - 1), default=0, show_default=True,
              help="d3 and d2m archives: seed of the draw.")
@click.option("--device", default="cpu", show_default=True, help="Where d3 and d2m archives are decoded.")
@decode_limit_options
def expand(archive, output, fmt, grid, grid_columns, max_grid_pixels, samples_per_class, sample_seed, device,
           max_bytes, max_parameters, max_macs_per_image, max_section_bytes, max_macs):
    """Expand ARCHIVE into images or tensors.

    What the expansion would cost is checked before it is made (the decode limits below): an archive
    or a --samples-per-class over them is refused with the figure and the option that raises it."""
    from d3codec import D3Dataset
    from d3codec.expand import grid_image, write_image_folder, write_tensors
    from d3codec.models import resolve_device

    if output is None and grid is None:
        raise click.UsageError("give -o DIR, --grid FILE.png, or both")
    try:
        ds = D3Dataset(archive, samples_per_class=samples_per_class, seed=sample_seed, device=resolve_device(device),
                       limits=decode_limits(max_bytes, max_parameters, max_macs_per_image, max_section_bytes, max_macs))
        picture = grid_image(ds, grid_columns, max_pixels=max_grid_pixels) if grid is not None else None
        if output is not None:
            if fmt == "png":
                n = write_image_folder(ds, output)
                click.echo(f"wrote {n} PNG images in {len(ds.classes)} class folders under {safe_text(output, 300)}")
            else:
                paths = write_tensors(ds, output, fmt)
                click.echo(f"wrote {safe_text(', '.join(map(str, paths)), 600)}")
        if picture is not None:
            picture.save(grid)
            click.echo(f"wrote {safe_text(grid, 300)}")
    except (D3Error, ValueError, OSError) as e:
        _fail(e)


@main.command("eval")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", type=click.Choice(["convnet3", "resnet18", "mlp"]), default="convnet3", show_default=True,
              help="Student network (resnet18: torchvision's, adapted to small images).")
@click.option("--epochs", type=count(), default=300, show_default=True)
@click.option("--runs", type=count(), default=3, show_default=True, help="Students per row (mean ± std).")
@click.option("--baseline", type=click.Choice(["none", "random-real"]), default="none", show_default=True,
              help="random-real: also train on random real images in the same bytes (float32 and PNG).")
@click.option("--dataset", help="Real dataset for the test split (default: the archive's).")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--seed", type=count(0, MAX_SEED), default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@click.option("--samples-per-class", type=count(),
              help="d3 and d2m archives: images to draw per class (default: d3 one per prior, d2m the archive's).")
@click.option("--sample-seed", type=count(0, MAX_SEED), default=0, show_default=True,
              help="d3 and d2m archives: seed of the draw.")
@click.option("--resample-every-epoch", is_flag=True,
              help="d3 and d2m archives: fresh samples for every student epoch (DiM), same count per class.")
@click.option("--training", type=click.Choice(["auto", "replay", "standard", "both"]), default="auto",
              show_default=True, help="replay: train by the archive's own schedule (bptt archives: its network, "
              "learned step sizes and θ₀); standard: the protocol above (--model, --epochs); auto: replay where "
              "the archive has a schedule; both: a row each.")
@decode_limit_options
def evaluate_cmd(archive, model, epochs, runs, baseline, dataset, data_root, seed, device, json_out, samples_per_class,
                 sample_seed, resample_every_epoch, training, max_bytes, max_parameters, max_macs_per_image,
                 max_section_bytes, max_macs):
    """Train fresh students on ARCHIVE and report final test accuracy, bytes and training time."""
    from d3codec import D3Dataset
    from d3codec.data import load_dataset
    from d3codec.evaluate import StudentConfig, evaluate, random_real_subset, test_split
    from d3codec.models import resolve_device

    try:
        dev = resolve_device(device)
        ds = D3Dataset(archive, samples_per_class=samples_per_class, seed=sample_seed, device=dev,
                       limits=decode_limits(max_bytes, max_parameters, max_macs_per_image, max_section_bytes, max_macs))
        file_bytes = Path(archive).stat().st_size
        real = load_dataset(dataset or ds.meta["dataset"]["name"], data_root)
        if real.classes != ds.classes:
            raise ValueError(f"the archive's classes do not match {real.name}'s; pass --dataset")
        if tuple(real.image_shape) != ds.image_shape:
            raise ValueError(f"the archive's image shape {ds.image_shape} is not {real.name}'s "
                             f"{tuple(real.image_shape)}; pass the --dataset it was made from")
        config = StudentConfig(model=model, epochs=epochs)
        test = test_split(real)
        log = lambda m: click.echo(m, err=True)  # noqa: E731
        targets = ds.soft_labels if ds.soft_labels is not None else ds.labels
        if resample_every_epoch and not ds.sampled:
            raise ValueError(f"--resample-every-epoch needs a sampled archive (d3, d2m), not {ds.meta['method']}")
        per_class = len(ds) // len(ds.classes)

        def draw_fresh(run: int, epoch: int):
            images, labels, soft = ds.draw(per_class, seed=sample_seed + 100_003 * (run + 1) + epoch)
            return images, (soft if soft is not None and ds.soft_labels is not None else labels)
        resample = draw_fresh if resample_every_epoch else None
        if training == "auto":
            training = "replay" if ds.schedule is not None else "standard"
        if training in ("replay", "both") and ds.schedule is None:
            raise ValueError("this archive carries no training schedule (only pixel --objective bptt archives do); "
                             "use --training standard")
        results = []
        if training in ("replay", "both"):
            sched = ds.schedule
            fixed = sched.init == "fixed"  # from the stored θ₀ every run is the same computation: run it once
            note = "stored θ₀: one run, as every run is the same" if fixed else "a fresh θ₀ per run"
            results.append(evaluate(f"archive ({ds.meta['method']}, replayed {sched.network} schedule of "
                                    f"{sched.steps}×{sched.epochs} steps, {note})", ds.images, ds.labels, real,
                                    1 if fixed else runs, config, seed, dev, test, file_bytes, log, schedule=sched))
        if training in ("standard", "both"):
            results.append(evaluate(f"archive ({ds.meta['method']})", ds.images, targets, real, runs, config, seed,
                                    dev, test, file_bytes, log, resample))
        if baseline == "random-real" and ds.schedule is not None:  # the paper's baseline: as many real images
            n = len(ds) // len(ds.classes)
            x, y, _ = random_real_subset(real, n * len(ds.classes) * math.prod(ds.image_shape) * 4,
                                         "float32", seed)
            results.append(evaluate(f"random real (same count, {n} per class)", x, y, real, runs, config, seed, dev,
                                    test, None, log))
        if baseline == "random-real":
            budget = ds.meta.get("budget", {}).get("bytes") or file_bytes
            for storage in ("float32", "png"):
                x, y, used = random_real_subset(real, budget, storage, seed)
                results.append(evaluate(f"random real ({storage})", x, y, real, runs, config, seed, dev, test, used,
                                        log))
    except (D3Error, ValueError, OSError) as e:
        _fail(e)
    click.echo(f"{model}, {epochs} epochs (standard rows), {runs} runs, device {dev}; final-epoch test accuracy "
               f"on {real.name}:")
    for r in results:
        click.echo("  " + r.summary())
    if json_out:
        Path(json_out).write_text(json.dumps([{"name": r.name, "images": r.images, "bytes": r.file_bytes,
                                               "accuracies": r.accuracies, "seconds": r.seconds, "mean": r.mean,
                                               "std": r.std} for r in results], indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
