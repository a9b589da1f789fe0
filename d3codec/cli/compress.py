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

from d3codec.cli.options import LabellerWidth, OptionValueError, PositiveFinite, count, fail
from d3codec.encode.defaults import (
    FACTOR_3_MAX_IPC,
    MANY_CLASSES,
    class_count,
    default_method,
)
from d3codec.encode.federated import rank
from d3codec.encode.pipeline import MAX_BUDGET_BYTES, MAX_REAL_PER_CLASS, MAX_SEED, MIN_SIDE
from d3codec.encode.request import CompressRequest, D3RequestError, LabellerRequest, Prepared, prepare, run_prepared
from d3codec.errors import D3Error
from d3codec.format.meta import MAX_SIDE
from d3codec.format.text import safe_text
from d3codec.methods import Method, Option, archive_kind, get_method, method_names

DATASETS = "fashion-mnist, mnist, cifar10, cifar100, imagenet, or a class-per-folder path"
# the old spelling: --method NAME [--objective NAME] → the method now named
LEGACY = {("pixel", "dm"): "dm", ("pixel", "bptt"): "bptt", ("d3", "dm"): "d3", ("d2m", "dm"): "d2m"}
DEFAULTED = "d3codec.default_method"  # ctx.meta key: no method was named, so the default rule's options apply


class SectionOption(click.Option):
    """A click option shown under a heading of ``--help`` (``section``)."""

    def __init__(self, *args, section: str = "Options", **kwargs):
        super().__init__(*args, **kwargs)
        self.section = section


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


def negative(option: Option) -> str | None:
    return "--no-" + option.name[2:] if option.kind == "flag" else None


def preset_names(method: Method) -> list[str]:
    """The method's presets, the default (fast) first."""
    return sorted(method.presets, key=lambda name: name != "fast")


def preset_defaults(method: Method, field: str) -> str:
    """``[default: 400 (fast), 20000 (paper)]``, or one value where every preset agrees, or "" for None."""
    values = {preset: getattr(method.presets[preset], field) for preset in preset_names(method)}
    if all(v is None for v in values.values()):
        return ""
    shown = {k: ("on" if v is True else "off" if v is False else v) for k, v in values.items()}
    if len(set(map(str, shown.values()))) == 1:
        return f"  [default: {next(iter(shown.values()))}]"
    return "  [default: " + ", ".join(f"{v} ({k})" for k, v in shown.items()) + "]"


def click_option(option: Option, method: Method, section: str) -> click.Option:
    """The click option of a registry Option, under ``section``, its help ending in the presets' defaults."""
    help_text = option.help + (preset_defaults(method, option.field) if option.field in method.config_fields() else "")
    if option.kind == "flag":
        return SectionOption(
            [f"{option.name}/{negative(option)}", option.field], default=None, help=help_text, section=section
        )
    types = {
        "int": lambda: count(
            int(option.low) if option.low is not None else None, int(option.high) if option.high is not None else None
        ),
        "float": lambda: PositiveFinite(
            option.low if option.low is not None else float("-inf"),
            option.high if option.high is not None else float("inf"),
            inclusive=True,
        ),
        "choice": lambda: click.Choice(option.choices),
        "file": lambda: click.Path(exists=True, dir_okay=False),
        "path": lambda: click.Path(dir_okay=False, writable=True),
    }
    return SectionOption([option.name, option.field], type=types[option.kind](), help=help_text, section=section)


def shared_options(method: Method) -> list[click.Parameter]:
    """The options every method's command has, under their headings."""
    return output_options() + budget_options() + run_options(method) + checkpoint_options(method) + labeller_options()


def output_options() -> list[click.Parameter]:
    return [
        SectionOption(
            ["-o", "--output"],
            required=True,
            type=click.Path(dir_okay=False),
            help="Archive to write (.d3).",
            section="Output",
        ),
        SectionOption(
            ["--force"],
            is_flag=True,
            help="Overwrite OUTPUT if it exists (without it, an existing file is refused before any work).",
            section="Output",
        ),
        SectionOption(["--quiet"], is_flag=True, help="No progress bar.", section="Output"),
        SectionOption(
            ["--json", "as_json"],
            is_flag=True,
            section="Output",
            help="End with one line of JSON on "
            "standard output instead of the sentence: path, file_bytes, budget, method, stored, "
            "distill_seconds, params, stats.",
        ),
    ]


def budget_options() -> list[click.Parameter]:
    """The budget (one of two) and the data."""
    return [
        SectionOption(
            ["--ipc"],
            type=PositiveFinite(),
            help="Budget as N float32 images per class: N·K·C·H·W·4 bytes (N > 0; the bytes at most 2 GiB).",
            section="Budget (give one)",
        ),
        SectionOption(
            ["--budget"],
            type=count(1, MAX_BUDGET_BYTES),
            help="Budget in bytes, 1 to 2 GiB; the whole file counts.",
            section="Budget (give one)",
        ),
        SectionOption(
            ["--data-root"], type=click.Path(file_okay=False), help="Where the real data is (or goes).", section="Data"
        ),
        SectionOption(
            ["--resolution"],
            type=count(MIN_SIDE, MAX_SIDE),
            help="Side length for imagenet and folder datasets (default 64).",
            section="Data",
        ),
    ]


def run_options(method: Method) -> list[click.Parameter]:
    run_defaults = {f: preset_defaults(method, f) for f in ("iterations", "real_per_class")}
    return [
        SectionOption(
            ["--preset"],
            type=click.Choice(preset_names(method)),
            default="fast",
            show_default=True,
            help="fast: minutes on a CPU; paper: the paper's settings, for a GPU; smoke: a first picture, not a "
            "result; rehearsal (dm, d3, d2m): the whole pipeline at full class count with a few "
            "iterations, to check a large run (ImageNet) end to end before spending the hours.",
            section="Run",
        ),
        SectionOption(
            ["--iterations"],
            type=count(1, 100_000_000),
            help="Override the preset's iteration count (at least 1)." + run_defaults["iterations"],
            section="Run",
        ),
        SectionOption(
            ["--real-per-class"],
            type=count(1, MAX_REAL_PER_CLASS),
            help="Real images per class per iteration." + run_defaults["real_per_class"],
            section="Run",
        ),
        SectionOption(
            ["--seed"],
            type=count(0, MAX_SEED),
            default=0,
            show_default=True,
            section="Run",
            help="Makes the run reproducible on the same device and software.",
        ),
        SectionOption(
            ["--device"], default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...", section="Run"
        ),
        SectionOption(
            ["--experts"],
            type=click.Path(file_okay=False),
            section="Run",
            help="The expert pool's cache "
            "folder (--matching dance: ConvNet-3s trained on the real data once, reused by every run; "
            "default $D3CODEC_EXPERTS, else ~/.cache/d3codec/experts).",
        ),
    ]


def checkpoint_options(method: Method) -> list[click.Parameter]:
    return [
        SectionOption(
            ["--checkpoint"],
            type=click.Path(dir_okay=False),
            help=method.checkpoint_help[0].upper() + method.checkpoint_help[1:] + ".",
            section="Checkpoint",
        ),
        SectionOption(
            ["--resume", "resume"],
            flag_value="resume",
            default=None,
            section="Checkpoint",
            help="Insist on going on from the checkpoint (refused when there is none). Without --resume "
            "or --restart, a checkpoint of the same run is taken up and one of another run is refused.",
        ),
        SectionOption(
            ["--restart", "resume"],
            flag_value="restart",
            section="Checkpoint",
            help="Delete this output's checkpoints first and distil from scratch.",
        ),
    ]


def labeller_options() -> list[click.Parameter]:
    """A labeller stored beside what the method stores (spec/FORMAT.md §5.8)."""
    return [
        SectionOption(
            ["--labeller-width"],
            type=LabellerWidth(),
            section="Labeller (spec/FORMAT.md §5.8)",
            help="Store a ConvNet-3 labeller of this width, trained here, beside what the method stores: "
            "its bytes come out of the budget, and students relabel every augmented batch with it. auto: "
            "the budget rule (the widest of 8, 16, 32 that takes at most 15 % of the budget; none where "
            "width 8 takes more).",
        ),
        SectionOption(
            ["--labeller"],
            type=click.Path(exists=True, dir_okay=False),
            section="Labeller (spec/FORMAT.md §5.8)",
            help="Store this ConvNet-3 (.safetensors, as --save-teacher writes) "
            "as the labeller instead of training one.",
        ),
        SectionOption(
            ["--labeller-epochs"],
            type=PositiveFinite(0.01, 10_000, inclusive=True),
            default=10.0,
            show_default=True,
            section="Labeller (spec/FORMAT.md §5.8)",
            help="Training epochs of the labeller.",
        ),
        SectionOption(
            ["--labeller-temperature"],
            type=PositiveFinite(0.001, 1000, inclusive=True),
            default=1.0,
            show_default=True,
            section="Labeller (spec/FORMAT.md §5.8)",
            help="Softmax temperature of its soft labels.",
        ),
        SectionOption(
            ["--labeller-dtype"],
            type=click.Choice(["int8", "float16"]),
            default="int8",
            show_default=True,
            section="Labeller (spec/FORMAT.md §5.8)",
            help="How it is stored.",
        ),
    ]


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
