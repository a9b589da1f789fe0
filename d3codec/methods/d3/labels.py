"""Soft labels of method ``d3``'s prior means (Qin, Deng & Alvarez-Melis 2024, Sec. 3.4: one label per prior),
and the memory a group's decoder takes, which sizes the batches labelled and the classes matched at once."""

from __future__ import annotations

import copy

import torch
from torch import nn

from d3codec.data.real import Normalisation
from d3codec.methods.d3.layout import GroupPlan
from d3codec.nn.models import decoder_stage_widths, upsampling_geometry
from d3codec.nn.teacher import Teacher
from d3codec.util.progress import progress_bar

LABEL_MEMORY_BYTES = 64 << 20  # activations of one batch of decoded means labelled (small batches: faster on CPU)


def decoder_map_bytes(g: GroupPlan, image_shape: tuple[int, int, int]) -> list[int]:
    """Bytes of one float32 map of each of the decoder's stages (after each upsampling) for one sample."""
    upsamples, h0, w0 = upsampling_geometry(image_shape)
    widths = decoder_stage_widths(g.decoder_architecture, g.decoder_width, upsamples)
    return [widths[i] * (h0 << i) * (w0 << i) * 4 for i in range(1, upsamples + 1)] or [g.decoder_width * h0 * w0 * 4]


def decoder_activation_bytes(g: GroupPlan, image_shape: tuple[int, int, int]) -> int:
    """Bytes one decoded sample keeps for the backward pass through group ``g``'s decoder: about 4 maps of each
    stage (upsampling, convolution, norm and activation; saved-tensor hooks count 5.1 maps of width·H·W over
    a uniform decoder's stages at 28 and 64 pixels), with what the backward pass adds. An estimate for sizing
    chunks (d3codec.methods.matching.memory_sized_chunk)."""
    return 4 * sum(decoder_map_bytes(g, image_shape)) + 2 * max(decoder_map_bytes(g, image_shape))


def label_means(
    decoder: nn.Module,
    teacher: Teacher,
    means: torch.Tensor,
    normalise: Normalisation,
    temperature: float,
    top_k: int | None,
    rows: int,
    progress: bool = True,
) -> tuple[torch.Tensor, ...]:
    """Soft labels of prior means (Qin et al. 2024, Sec. 3.4: one label per prior): the teacher's
    probabilities, at ``temperature``, on each mean decoded by ``decoder``, ``rows`` means a batch.

    Args: means (N, Z) float32; top_k: keep each row's k largest (spec §5.6), None for whole rows.
    Returns: on the CPU, (values (N, k) float32, indices (N, k) int64), or (rows (N, K),) for whole rows.

    The outputs are allocated once and filled batch by batch: a list of per-batch results, each kept between
    the large decoder buffers freed every batch, fragmented the heap of a process that keeps freed memory
    (d3codec.util.runtime): about 4 MB lost a batch, 15.8 GB on a rank of the ImageNet rehearsal. Both networks
    run on copies in channels-last memory format: 1.85 times the means a second at ImageNet's shapes on a
    CPU thread (benchmarks/label_speed.py; torch.compile gave 2.3 times, at tens of seconds of compiling).
    """
    n = len(means)
    values = torch.empty(n, top_k or len(teacher.classes), device=means.device)
    indices = torch.empty(n, top_k, dtype=torch.int64, device=means.device) if top_k else None
    decoder = copy.deepcopy(decoder).to(memory_format=torch.channels_last)
    teacher = Teacher(
        copy.deepcopy(teacher.net).to(memory_format=torch.channels_last), teacher.classes, teacher.out_index
    )
    with torch.no_grad():
        for i in progress_bar(range(0, n, rows), "D3 soft labels", progress, unit="batch"):
            probabilities = teacher.probabilities(normalise(decoder(means[i : i + rows])), temperature)
            if top_k and indices is not None:
                values[i : i + rows], indices[i : i + rows] = probabilities.topk(top_k, dim=-1)
            else:
                values[i : i + rows] = probabilities
    return (values.cpu(), indices.cpu()) if indices is not None else (values.cpu(),)
