"""Method ``d2m``: data-to-model distillation into a class-conditional generator, sampled at any IPC.

encoder.py trains (Sajedi et al. 2024): config.py holds its options and plan, sizing.py fits the generator to
the budget, pretraining.py pre-trains it and finetuning.py distils into it; networks.py holds the generator
and the pre-training networks; archive.py reads. This module registers the method and its archive kind.
"""

from d3codec.methods.d2m.archive import (
    SECTIONS,
    D2MSampler,
    decode,
    describe_params,
    load_labeller,
    load_sampler,
    read_params,
)
from d3codec.methods.d2m.config import PRESETS, D2MConfig, D2MPlan
from d3codec.methods.d2m.encoder import D2MEncoder, build_generator
from d3codec.methods.d2m.networks import (
    GENERATOR_WIDTHS,
    GENERATORS,
    ConditionalGenerator,
    load_generator,
    save_generator,
)
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


def build(method: Method, preset: str, options: dict, context: BuildContext) -> "D2MEncoder":
    """The D2M encoder of ``preset`` with ``options``; ``options["teacher"]`` and ``options["generator"]``,
    files, are loaded. Pre-training checkpoints to the context's checkpoint (default
    OUTPUT.pretrain.safetensors), fine-tuning to OUTPUT.ckpt.safetensors."""
    teacher_file, generator_file = options.pop("teacher", None), options.pop("generator", None)
    teacher = (
        load_teacher(teacher_file, context.image_shape, context.num_classes, context.device)
        if teacher_file is not None
        else None
    )
    generator = (
        load_generator(generator_file, context.num_classes, context.image_shape) if generator_file is not None else None
    )
    return D2MEncoder.from_options(
        preset,
        teacher,
        generator,
        context.checkpoint_or(".pretrain.safetensors"),
        context.beside_output(".ckpt.safetensors"),
        **options,
    )


register_archive_kind(
    ArchiveKind(
        "d2m",
        SECTIONS,
        load_sampler=load_sampler,
        describe=describe_params,
        labeller_section="teacher",
        read_labeller=load_labeller,
    )
)
register_method(
    Method(
        "d2m",
        "Data-to-model distillation (Sajedi et al. 2024): a class-conditional generator, sampled at any IPC.",
        "d2m",
        D2MEncoder,
        (
            Option(
                "--pretraining",
                "pretraining",
                "Pre-train the generator as a conditional GAN or as the decoder of a conditional VAE.",
                kind="choice",
                choices=("gan", "vae"),
            ),
            Option("--pretrain-iterations", "pretrain_iterations", "Pre-training iterations.", high=100_000_000),
            Option(
                "--task-balance",
                "task_balance",
                "Weight of prediction matching against embedding matching.",
                kind="float",
                low=0.0,
                high=1e6,
            ),
            Option(
                "--generator-width",
                "generator_width",
                "Generator channels (default: fill the budget).",
                low=4,
                high=4096,
            ),
            Option(
                "--soft-labels",
                "soft_labels",
                "Store the teacher itself (int8, in the budget), so that every sample "
                "drawn gets the teacher's soft label.",
                kind="flag",
            ),
            Option(
                "--generator",
                "generator",
                "Fine-tune this pre-trained generator (safetensors) instead of pre-training one.",
                kind="file",
            ),
            TEACHER_EPOCHS_OPTION,
            TEACHER_OPTION,
            SAVE_TEACHER_OPTION,
        )
        + MATCHING_OPTIONS,
        build=build,
        hints={"--images-per-class": "d2m archives draw any count at expansion (--samples-per-class)"},
        checkpoint_help="the pre-training checkpoint (default: OUTPUT.pretrain.safetensors, every 200 iterations "
        "in the fast preset, kept for another fine-tuning); fine-tuning checkpoints to OUTPUT.ckpt.safetensors",
    )
)

__all__ = [
    "D2MConfig",
    "D2MEncoder",
    "D2MPlan",
    "D2MSampler",
    "ConditionalGenerator",
    "GENERATORS",
    "GENERATOR_WIDTHS",
    "PRESETS",
    "build_generator",
    "decode",
    "load_generator",
    "load_labeller",
    "load_sampler",
    "read_params",
    "save_generator",
]
