"""Method ``d3``: distributional distillation into per-class priors, a small decoder and soft labels.

encoder.py trains (Qin, Deng & Alvarez-Melis 2024: config.py its options, planning.py its budget rule, group.py
a group's distillation, glo.py the warm start's latent optimisation); archive.py reads; layout.py defines the
groups' tensors both use; merge.py merges archives of disjoint classes (federated subtasks, ``d3 merge``).
This module registers the method and its archive kind.
"""

from d3codec.methods.d3.archive import D3Sampler, decode, describe_params, load_sampler, read_groups
from d3codec.methods.d3.config import PRESETS, D3Config
from d3codec.methods.d3.encoder import D3Encoder
from d3codec.methods.d3.glo import fit_decoder, pca_latents
from d3codec.methods.d3.layout import (
    DECODER_WIDTHS,
    SECTIONS,
    D3Plan,
    GroupPlan,
    decoder_shapes,
    dequantise_priors,
    group_entry,
    group_tensors,
    quantise_priors,
    sections_of,
    split_classes,
)
from d3codec.methods.d3.merge import merge_archives
from d3codec.methods.matching import MATCHING_OPTIONS
from d3codec.nn.teacher import load_teacher
from d3codec.registry import (
    SAVE_TEACHER_OPTION,
    TEACHER_EPOCHS_OPTION,
    TEACHER_OPTION,
    ArchiveKind,
    BuildContext,
    Method,
    Option,
    register_archive_kind,
    register_method,
)


def build(method: Method, preset: str, options: dict, context: BuildContext) -> D3Encoder:
    """The D3 encoder of ``preset`` with ``options``; ``options["teacher"]``, a file, is loaded on the context's
    device."""
    teacher_file = options.pop("teacher", None)
    teacher = (
        load_teacher(teacher_file, context.image_shape, context.num_classes, context.device)
        if teacher_file is not None
        else None
    )
    return D3Encoder.from_options(preset, teacher, context.checkpoint_or(".ckpt.safetensors"), **options)


register_archive_kind(ArchiveKind("d3", SECTIONS, load_sampler=load_sampler, describe=describe_params))
register_method(
    Method(
        "d3",
        "Distributional distillation (Qin et al. 2024): per-class Gaussian priors, a small decoder and a soft "
        "label per prior, in federated subtasks.",
        "d3",
        D3Encoder,
        (
            Option(
                "--subtasks", "subtasks", "Split the classes into K groups, each with its own decoder.", high=100_000
            ),
            Option(
                "--latent-dim",
                "latent_dim",
                "Latent size (default by the budget rule: 32 up to 32 pixels a side, else 64).",
                high=4096,
            ),
            Option(
                "--priors-per-class",
                "priors_per_class",
                "Priors per class (default: as many as the budget holds).",
                high=1_000_000,
            ),
            Option(
                "--decoder-width",
                "decoder_width",
                "Decoder channels (default: the widest that takes at most decoder_share of the budget).",
                high=4096,
            ),
            Option(
                "--decoder-architecture",
                "decoder_architecture",
                "uniform: every stage as wide as the decoder; "
                "tapered: channels halve at every upsampling, far cheaper on large images (default: uniform up to 32 "
                "pixels a side, else tapered).",
                kind="choice",
                choices=("uniform", "tapered"),
            ),
            Option(
                "--decoder-dtype",
                "decoder_dtype",
                "How decoder weights are stored.",
                kind="choice",
                choices=("int8", "float16"),
            ),
            Option(
                "--prior-dtype",
                "prior_dtype",
                "How prior means and log-variances are stored (int8: about twice the priors).",
                kind="choice",
                choices=("int8", "float16"),
            ),
            Option("--soft-labels", "soft_labels", "Store a teacher's soft label per prior.", kind="flag"),
            Option(
                "--label-top-k",
                "label_top_k",
                "Store each soft label as its K largest probabilities and their classes "
                "(the rest of the mass spread evenly over the other classes; 0: whole rows). Default: whole rows for "
                "subtasks of up to 20 classes, else the top 10.",
                low=0,
                high=32767,
            ),
            Option(
                "--warm-start-iterations",
                "init_iterations",
                "Iterations fitting the decoder and prior means to real images before matching (0: none).",
                low=0,
                high=10_000_000,
            ),
            TEACHER_EPOCHS_OPTION,
            TEACHER_OPTION,
            SAVE_TEACHER_OPTION,
        )
        + MATCHING_OPTIONS,
        build=build,
        subtasks=True,
        hints={"--images-per-class": "use --priors-per-class"},
        checkpoint_help="each subtask i checkpoints to this name with .g{i} before its suffix (default: "
        "OUTPUT.ckpt.g{i}.safetensors, written every 5 minutes, deleted once the archive is written); a killed encode "
        "resumes by running the same command again",
    )
)

__all__ = [
    "D3Config",
    "D3Encoder",
    "D3Plan",
    "D3Sampler",
    "GroupPlan",
    "PRESETS",
    "DECODER_WIDTHS",
    "decode",
    "decoder_shapes",
    "dequantise_priors",
    "describe_params",
    "fit_decoder",
    "group_entry",
    "group_tensors",
    "load_sampler",
    "merge_archives",
    "pca_latents",
    "quantise_priors",
    "read_groups",
    "sections_of",
    "split_classes",
]
