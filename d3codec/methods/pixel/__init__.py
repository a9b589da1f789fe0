"""Pixel archives: the synthetic images themselves, learned by DM (``dm``) or BPTT (``bptt``).

Both methods write the archive kind ``pixel`` (spec/FORMAT.md §5): reading it is archive.py, and each
method's training is its own module (dm.py, bptt.py). This module registers the three.
"""

from d3codec.methods.matching import MATCHING_OPTIONS
from d3codec.methods.pixel.archive import INITS, NETWORKS, SECTIONS, decode, describe_params, read_schedule
from d3codec.methods.pixel.bptt import BPTTConfig, BPTTEncoder, BPTTPlan, unrolled_gradients
from d3codec.methods.pixel.dm import DMConfig, DMEncoder
from d3codec.methods.pixel.formation import FORMATION_CHOICES, MAX_FACTOR, Formation
from d3codec.registry import ArchiveKind, Method, Option, register_archive_kind, register_method

STORAGE_OPTION = Option(
    "--storage-dtype",
    "storage_dtype",
    "How images are stored; auto picks uint8 with a per-class range (most images per byte).",
    kind="choice",
    choices=("auto", "uint8", "float16", "float32"),
)
IMAGES_OPTION = Option(
    "--images-per-class", "images_per_class", "Fix the image count instead of filling the budget.", high=1_000_000
)

register_archive_kind(
    ArchiveKind("pixel", SECTIONS, decode=decode, read_schedule=read_schedule, describe=describe_params)
)
register_method(
    Method(
        "dm",
        "Distribution matching (Zhao & Bilen, WACV 2023): learn the images, or codes a formation turns into images.",
        "pixel",
        DMEncoder,
        (
            STORAGE_OPTION,
            IMAGES_OPTION,
            Option(
                "--formation",
                "formation",
                "How stored codes become images: pixels (the images), lowres (IDC's "
                "multi-formation: stored at 1/f of the side, upsampled), dct (FreD: the lowest DCT coefficients) or "
                "dct-variance (FreD's selection: the DCT coefficients of largest variance on the real data, a mask "
                "stored). lowres and dct hold about f² times as many images.",
                kind="choice",
                choices=FORMATION_CHOICES,
            ),
            Option(
                "--formation-factor",
                "formation_factor",
                "The side reduction f of lowres and dct (default 2).",
                low=2,
                high=MAX_FACTOR,
            ),
        )
        + MATCHING_OPTIONS,
    )
)
register_method(
    Method(
        "bptt",
        "The original dataset distillation (Wang et al. 2018): images and per-step learning rates learned "
        "through unrolled training; the archive carries the schedule.",
        "pixel",
        BPTTEncoder,
        (
            Option(
                "--init",
                "init",
                "fixed: one stored initialisation θ₀, counted in the budget; random: a fresh one every "
                "step, so the images work from any.",
                kind="choice",
                choices=INITS,
            ),
            Option("--network", "network", "The unrolled network.", kind="choice", choices=NETWORKS),
            Option(
                "--inner-steps",
                "inner_steps",
                "GD steps an epoch, each on its own share of the images (default: up to "
                "10, dividing the images per class).",
                high=100_000,
            ),
            Option(
                "--inner-epochs",
                "inner_epochs",
                "Passes over the steps (default 3, or more for at least 10 steps in all).",
                high=100_000,
            ),
            STORAGE_OPTION,
            IMAGES_OPTION,
        ),
    )
)

__all__ = [
    "DMConfig",
    "DMEncoder",
    "Formation",
    "BPTTConfig",
    "BPTTEncoder",
    "BPTTPlan",
    "unrolled_gradients",
    "decode",
    "read_schedule",
    "describe_params",
]
