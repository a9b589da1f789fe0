"""``d3 compress [METHOD] DATASET ...``: one subcommand per registered method, built from the registry.

Every method's command has the same shared option groups (output, budget, data, run, checkpoint) and its
own options (d3codec.registry.Option), each shown under its heading in ``--help`` with the presets'
defaults. ``d3 compress DATASET ...`` with no method named runs the default method (dm). The spelling
of d3codec 0.1, ``--method pixel|d3|d2m`` and ``--objective dm|bptt``, still works for one release, with
a deprecation notice.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from d3codec.cli.method_options import SectionOption, click_option, negative, shared_options
from d3codec.cli.options import OptionValueError, count, fail
from d3codec.encode.defaults import (
    FACTOR_3_MAX_IPC,
    MANY_CLASSES,
    class_count,
    default_method,
)
from d3codec.encode.federated import rank
from d3codec.encode.request import CompressRequest, D3RequestError, LabellerRequest, Prepared, prepare, run_prepared
from d3codec.errors import D3Error
from d3codec.format.text import safe_text
from d3codec.methods import Method, archive_kind, get_method, method_names

DATASETS = "fashion-mnist, mnist, cifar10, cifar100, imagenet, or a class-per-folder path"
# the old spelling: --method NAME [--objective NAME] → the method now named
LEGACY = {("pixel", "dm"): "dm", ("pixel", "bptt"): "bptt", ("d3", "dm"): "d3", ("d2m", "dm"): "d2m"}
DEFAULTED = "d3codec.default_method"  # ctx.meta key: no method was named, so the default rule's options apply


class MethodCommand(click.Command):
    """The compress command of one method: options under headings, and a refusal that names the method an
    option belongs to."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                sections.setdefault(getattr(param, "section", "Other options"), []).append(record)
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as error:
            owners = [
                name
                for name in method_names()
                if any(error.option_name in (o.name, negative(o)) for o in get_method(name).options)
            ]
            if not owners:
                raise
            hint = get_method(self.name or "").hints.get(error.option_name)
            raise OptionValueError(
                f"{error.option_name} is an option of {' and '.join(owners)}, not of {self.name}"
                + (f"; {hint}" if hint else f": d3 compress {owners[0]} DATASET ... {error.option_name} ..."),
                ctx=ctx,
            ) from None


def method_command(method: Method) -> MethodCommand:
    """The ``d3 compress NAME`` command of ``method``."""
    section = f"{method.name} options"
    params: list[click.Parameter] = [click.Argument(["dataset"])] + shared_options(method)
    params += [click_option(o, method, section) for o in method.options]
    if method.subtasks:
        params.append(
            SectionOption(
                ["--workers"],
                type=count(1, 256),
                section=section,
                help="Distil the subtasks on N local processes (torch.distributed); under torchrun, leave it out.",
            )
        )

    def callback(**values) -> None:
        run_compress(method, values)

    return MethodCommand(
        method.name,
        params=params,
        callback=callback,
        short_help=method.summary,
        help=f"{method.summary}\n\nDistil DATASET ({DATASETS}) into an archive that fits the "
        "budget; the whole file counts.",
        context_settings={"help_option_names": ["-h", "--help"]},
    )


class CompressGroup(click.Group):
    """``d3 compress``: a subcommand per registered method (read from the registry whenever it is asked),
    the default method where none is named, and the old ``--method``/``--objective`` spelling."""

    def __init__(self, name: str = "compress"):
        super().__init__(
            name,
            context_settings={"help_option_names": ["-h", "--help"]},
            help=f"Distil DATASET ({DATASETS}) into a .d3 archive that fits a byte budget.\n\n"
            "METHOD is one of those below. Without one, the default rule picks: d3 for more than "
            f"{MANY_CLASSES} classes, else dm through FreD's dct-variance formation (×3 up to IPC "
            f"{FACTOR_3_MAX_IPC:g}, ×2 above) with DANCE's matching (options you give win). "
            "`d3 compress METHOD -h` lists its options with every default. Under torchrun (or with "
            "--workers N) a method that splits into subtasks (d3) spreads them over the ranks.",
            short_help="Distil a dataset into a .d3 archive (d3 compress [METHOD] DATASET ...).",
        )

    def list_commands(self, ctx: click.Context) -> list[str]:
        return method_names()

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return method_command(get_method(name)) if name in method_names() else None

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[METHOD] DATASET -o OUT.d3 (--ipc N | --budget BYTES) [OPTIONS]")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, get_method(name).summary) for name in method_names()]
        with formatter.section("Methods"):
            formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args, legacy = legacy_method(list(args))
        if args and args[0] not in method_names() and args[0] not in ("-h", "--help"):
            if legacy is None:  # the default rule (d3codec.encode.defaults); run_compress adds its options
                ctx.meta[DEFAULTED] = True
            classes = class_count(args[0]) if not args[0].startswith("-") else None
            args.insert(0, legacy or default_method(classes or 0))
        elif legacy is not None and args and args[0] != legacy:
            raise click.UsageError(f"--method/--objective name {legacy}, but the command names {args[0]}: keep one")
        return super().parse_args(ctx, args)


def legacy_method(args: list[str]) -> tuple[list[str], str | None]:
    """``args`` without d3codec 0.1's ``--method``/``--objective`` options, and the method they name (None
    where they are absent). Prints a deprecation notice when they are present.

    Raises: click.UsageError for a value no method has."""
    given: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key = next((k for k in ("--method", "--objective") if arg == k or arg.startswith(k + "=")), None)
        if key is None:
            rest.append(arg)
            i += 1
            continue
        if arg == key:
            if i + 1 >= len(args):
                raise click.UsageError(f"{key} needs a value")
            given[key], i = args[i + 1], i + 2
        else:
            given[key], i = arg.split("=", 1)[1], i + 1
    if not given:
        return args, None
    pair = (given.get("--method", "pixel"), given.get("--objective", "dm"))
    if pair not in LEGACY:
        raise click.UsageError(
            f"--method {pair[0]} --objective {pair[1]} is no method; name one: "
            f"d3 compress {'|'.join(method_names())} DATASET ..."
        )
    name = LEGACY[pair]
    click.echo(
        f"d3 compress: --method/--objective are deprecated and go in the next release; write "
        f"`d3 compress {name} DATASET ...`",
        err=True,
    )
    return rest, name


# a refused request's field (d3codec.encode.request.D3RequestError) → what the command line says, in its flags
REFUSALS = {
    "ipc/budget": lambda v: "give exactly one of --ipc N or --budget BYTES",
    "output": lambda v: (
        f"-o {v['output']}: d3 compress writes a .d3 archive, not a picture; write the archive (-o "
        f"{Path(v['output']).with_suffix('.d3').name}), then draw it with d3 expand ARCHIVE --grid "
        f"{Path(v['output']).name}"
    ),
    "force": lambda v: f"{v['output']} exists; pass --force to overwrite it, or choose another -o",
    "resume": lambda v: f"--resume: there is no checkpoint of {v['output']} to go on from; leave --resume out to start",
    "workers": lambda v: "--workers starts its own ranks: leave it out under torchrun",
    "labeller": lambda v: (
        "a federated run (--workers, torchrun) does not store a labeller yet: leave out "
        "--labeller-width/--labeller, or run in one process"
    ),
}


def request_of(method: Method, values: dict) -> CompressRequest:
    """The library's request for a method's command and its flags' values."""
    width = values["labeller_width"]
    ctx = click.get_current_context(silent=True)
    return CompressRequest(
        method.name,
        values["dataset"],
        Path(values["output"]),
        values["ipc"],
        values["budget"],
        values["preset"],
        {
            "iterations": values["iterations"],
            "real_per_class": values["real_per_class"],
            **{o.field: values[o.field] for o in method.options},
        },
        bool(ctx is not None and ctx.meta.get(DEFAULTED)),
        values["data_root"],
        values["resolution"],
        values["device"],
        values["seed"],
        Path(values["checkpoint"]) if values["checkpoint"] else None,
        values["resume"] or "auto",
        values.get("workers"),
        LabellerRequest(
            width,
            Path(values["labeller"]) if values["labeller"] else None,
            values["labeller_epochs"],
            values["labeller_temperature"],
            values["labeller_dtype"],
        ),
        Path(values["experts"]) if values.get("experts") else None,
        values["force"],
        not values["quiet"],
    )


def announce(ready: Prepared, method: Method) -> None:
    """What a run says on standard error before its long work (rank 0 alone)."""
    if rank() != 0:
        return
    request, real = ready.request, ready.real
    if ready.resumed_from:
        click.echo(f"resuming from {', '.join(map(str, ready.resumed_from))} (--restart to start afresh)", err=True)
    click.echo(
        f"{safe_text(real.name, 120)}: {len(real.train_targets)} training images, "
        f"{real.num_classes} classes, shape {real.image_shape}; method {method.name}"
        + (f" (no method named: {ready.chosen})" if ready.chosen else "")
        + f", preset {request.preset}, "
        f"device {ready.device}" + (f", {request.workers} workers" if request.workers else ""),
        err=True,
    )


def run_compress(method: Method, values: dict) -> None:
    """The body of every method's command: the flags as a request the library runs (d3codec.encode.request),
    its refusals in the flags' words, and the result on standard output."""
    try:
        ready = prepare(request_of(method, values))
        announce(ready, method)
        result = run_prepared(ready)
    except D3RequestError as e:  # a flag's misuse (exit 2), or an output that would be lost (exit 1)
        if e.field in ("output", "force"):
            fail(ValueError(REFUSALS[e.field](values)))
        raise click.UsageError(REFUSALS[e.field](values)) from None
    except (D3Error, ValueError, OSError) as e:
        fail(e)
    if rank() != 0:
        return
    report(result, method, values["as_json"])
    for path in ready.encoder.checkpoint_files():  # what a run keeps (d2m: its pre-training, for another fine-tuning)
        click.echo(
            f"kept {path} ({path.stat().st_size:,} bytes): the same command starts from it; --restart deletes it",
            err=True,
        )


def report(result, method: Method, as_json: bool) -> None:
    """The written archive in one line, or as JSON."""
    kind = archive_kind(method.archive)
    describe = kind.describe if kind is not None else None  # of the params as written, after any trimming
    stored = describe(result.params) if describe is not None else method.archive
    if as_json:
        click.echo(
            json.dumps(
                {
                    "path": str(result.path),
                    "file_bytes": result.file_bytes,
                    "budget": result.budget,
                    "method": method.name,
                    "stored": stored,
                    "distill_seconds": result.stats.get("distill_seconds"),
                    "params": result.params,
                    "stats": result.stats,
                },
                default=str,
            )
        )
        return
    click.echo(
        f"wrote {result.path}: {result.file_bytes} bytes of a {result.budget}-byte budget "
        f"({100 * result.file_bytes / result.budget:.1f} %), {stored}, "
        f"distilled in {result.stats.get('distill_seconds', 0):.1f} s"
    )
