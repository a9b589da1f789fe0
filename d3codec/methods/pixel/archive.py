"""Reading pixel archives: the images DM and BPTT store, and the training schedule BPTT adds.

A pixel archive (``meta.method`` "pixel", spec/FORMAT.md §5.2) holds the synthetic images themselves in
its ``images`` section (see d3codec.format.storage), optionally per-image ``soft_labels``, and, when
``meta.params.objective`` is "bptt", a ``schedule`` section: the learned step sizes and (fixed init) θ₀
that d3codec.nn.schedule.TrainingSchedule replays. Nothing here trains; the encoders are dm.py and bptt.py.
"""

from __future__ import annotations

import torch

from d3codec.errors import D3FormatError
from d3codec.format.limits import DEFAULT_LIMITS, all_finite, check, network_cost, output_bytes
from d3codec.format.meta import describe, meta_int, meta_str
from d3codec.format.storage import check_probabilities, decode_images
from d3codec.format.weights import check_names, read_stored
from d3codec.methods.pixel.formation import read_formation
from d3codec.nn.models import build_model
from d3codec.nn.schedule import TrainingSchedule

SECTIONS = {"meta": True, "images": True, "soft_labels": True, "schedule": True}  # name → critical
NETWORKS = ("lenet", "convnet3")  # the networks a schedule may name
INITS = ("fixed", "random")
MAX_SCHEDULE_STEPS = 100_000  # a reader refuses longer schedules (replay time is linear in T)


def decode(reader, meta: dict, limits=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Images (N, C, H, W) float32 in pixel space, labels (N,) int64 and soft labels (N, K) float32
    (None where the archive has no ``soft_labels`` section) of a pixel archive. Where
    ``meta.params.formation`` says so, the ``images`` section holds codes (N, C, H/f, W/f) that the
    formation (formation.py) turns into the images.

    ``limits`` (d3codec.format.limits.DecodeLimits) bounds the decoded bytes before they are allocated.
    Raises: D3FormatError for tensors that break spec/FORMAT.md §5 (soft labels must be (N, K) F16 or
    F32 probabilities) or a bad formation; D3LimitError past the limits.
    """
    ds = meta["dataset"]
    num_classes, image_shape = len(ds["classes"]), tuple(ds["image_shape"])
    given = meta.get("params")
    params = given if isinstance(given, dict) else {}
    formation = read_formation(params, image_shape)
    tensors = reader.read_tensors("images")
    codes = tensors.get("images")
    if formation.kind != "pixels" and codes is not None and codes.dim() == 4:  # decoded images, not codes, count
        check(
            "bytes",
            output_bytes(codes.shape[0], image_shape, num_classes, "soft_labels" in reader),
            limits or DEFAULT_LIMITS,
            "max_bytes",
            f"decoding {codes.shape[0]} images of shape {image_shape}",
        )
    images, labels = decode_images(
        tensors, num_classes, formation.code_shape(image_shape), limits, soft="soft_labels" in reader
    )
    images = formation.decode(images, image_shape)
    if formation.kind != "pixels" and not all_finite(images):  # huge finite codes can overflow
        raise D3FormatError(f"section 'images': its {formation.kind} codes decode to images that are not finite")
    soft = None
    if "soft_labels" in reader:
        tensors = reader.read_tensors("soft_labels")
        check_names(tensors, {"soft_labels"}, "soft_labels")
        soft = tensors["soft_labels"]
        if soft.shape != (len(labels), num_classes) or soft.dtype not in (torch.float16, torch.float32):
            raise D3FormatError(
                "section 'soft_labels' must hold 'soft_labels' of shape (N, classes), float16 or float32"
            )
        check_probabilities(soft, "soft_labels", "soft_labels")
        soft = soft.float()
    return images, labels, soft


def schedule_network_cost(network: str, image_shape: tuple[int, int, int], num_classes: int):
    """The cost (d3codec.format.limits.NetworkCost) of one forward pass of a schedule's network on one image,
    measured on the meta device. Raises: D3FormatError when the network cannot run on the images
    (LeNet needs H = W ≥ 16, ConvNet-3 H = W ≥ 8)."""
    c, h, w = image_shape
    if h != w:
        raise D3FormatError(f"bptt archive: the {network} network needs square images, not {h}×{w}")
    return network_cost(
        lambda: build_model(network, c, num_classes, h),
        lambda: (torch.zeros(1, c, h, w),),
        f"the schedule's {network} network",
    )


def read_schedule(reader, meta: dict, limits=None) -> TrainingSchedule | None:
    """The training schedule of a pixel archive distilled with objective ``bptt``, else None.

    Raises: D3FormatError for a missing or malformed ``schedule`` section or parameters (unknown
    network, a network that cannot run on the images, non-positive or non-finite step sizes, θ₀ of
    the wrong names, shapes or dtypes, a schedule longer than MAX_SCHEDULE_STEPS); D3LimitError when
    θ₀ holds more values than ``limits.max_parameters``.
    """
    params = meta.get("params")
    params = params if isinstance(params, dict) else {}
    if params.get("objective") != "bptt":
        if "schedule" in reader:
            raise D3FormatError(
                "section 'schedule' belongs to objective bptt, but meta.params.objective is "
                f"{describe(params.get('objective'))}"
            )
        return None
    network = meta_str(params, "network", NETWORKS, "params.")
    init = meta_str(params, "init", INITS, "params.")
    steps = meta_int(params, "inner_steps", 1, MAX_SCHEDULE_STEPS, "params.")
    epochs = meta_int(params, "inner_epochs", 1, MAX_SCHEDULE_STEPS, "params.")
    if steps * epochs > MAX_SCHEDULE_STEPS:
        raise D3FormatError(
            f"bptt archive's inner_steps {steps} × inner_epochs {epochs} must be at most {MAX_SCHEDULE_STEPS}"
        )
    if "schedule" not in reader:
        raise D3FormatError("bptt archive lacks its 'schedule' section")
    ds = meta["dataset"]
    shape, k = tuple(ds["image_shape"]), len(ds["classes"])
    cost = schedule_network_cost(network, shape, k)
    if init == "fixed":
        check("values", cost.parameters, limits or DEFAULT_LIMITS, "max_parameters", f"θ₀ of {network}")
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in build_model(network, shape[0], k, shape[1]).named_parameters()}
    tensors = reader.read_tensors("schedule")
    check_names(tensors, {"step_sizes"} | ({f"theta0.{n}" for n in shapes} if init == "fixed" else set()), "schedule")
    floats = (torch.float32, torch.float16)
    step_sizes = read_stored(tensors, "schedule", "step_sizes", (steps * epochs,), None, floats)  # finite
    if not (step_sizes > 0).all():
        raise D3FormatError("section 'schedule': step sizes must be finite and positive")
    theta0 = None
    if init == "fixed":  # read_stored refuses non-finite values
        theta0 = {n: read_stored(tensors, "schedule", f"theta0.{n}", s, None, floats) for n, s in shapes.items()}
    return TrainingSchedule(network, steps, epochs, step_sizes, init, theta0, cost.macs)


def describe_params(params: dict) -> str:
    """A pixel archive's ``meta.params`` in a few words (d3 info, and the line d3 compress ends with)."""
    formation = params.get("formation")
    stored = f" as {formation['kind']} ×{formation['factor']} codes" if isinstance(formation, dict) else ""
    n = int(params["images_per_class"])
    count = f"{n - 1} to {n}" if "images" in params else f"{n}"  # trimmed image by image: classes differ by one
    words = f"objective {params.get('objective', 'dm')}: {count} {params['storage_dtype']} images per class{stored}"
    if "images" in params:
        words += f" ({int(params['images'])} in all)"
    if params.get("objective") == "bptt":
        words += (
            f", {int(params['inner_steps'])} steps × {int(params['inner_epochs'])} epochs of a "
            f"{params['network']} schedule, {params['init']} init"
        )
    return words
