"""The options of every ``d3 compress METHOD`` command, built from the registry: the shared groups (output,
budget, data, run, checkpoint, labeller) and each method's own (d3codec.registry.Option), with the presets'
defaults in their help."""

from __future__ import annotations

import click

from d3codec.cli.options import LabellerWidth, PositiveFinite, count
from d3codec.encode.pipeline import MAX_BUDGET_BYTES, MAX_REAL_PER_CLASS, MAX_SEED, MIN_SIDE
from d3codec.format.meta import MAX_SIDE
from d3codec.methods import Method, Option


class SectionOption(click.Option):
    """A click option shown under a heading of ``--help`` (``section``)."""

    def __init__(self, *args, section: str = "Options", **kwargs):
        super().__init__(*args, **kwargs)
        self.section = section


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
