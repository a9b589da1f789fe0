"""Distillation methods, each one module behind the :class:`~d3codec.methods.base.Encoder` interface.

``ENCODERS`` maps a method name to its encoder class; ``DECODERS`` maps a method that stores its
images to the function that reads them back, ``decode(reader, meta)`` → (images, labels, soft
labels or None); ``SAMPLERS`` maps a method that generates its images (any number per class) to
``load_sampler(reader, meta, device)`` → ``draw(samples_per_class, seed)`` → the same triple;
``SCHEDULES`` maps a method whose archives may carry a training schedule to
``read_schedule(reader, meta)`` → d3codec.schedule.TrainingSchedule or None; ``SECTIONS`` maps
the sections each method's decoder understands to their critical flag (a reader refuses any other
critical section, skips any other ancillary one, and refuses a known one flagged otherwise).
"""

from . import bptt, d2m, d3, pixel
from .base import DatasetSpec, Encoded, Encoder

ENCODERS = {"pixel": pixel.PixelEncoder, "d3": d3.D3Encoder, "d2m": d2m.D2MEncoder}
DECODERS = {"pixel": pixel.decode}
SAMPLERS = {"d3": d3.load_sampler, "d2m": d2m.load_sampler}
SCHEDULES = {"pixel": bptt.read_schedule}
SECTIONS = {"pixel": {"meta": True, "images": True, "soft_labels": True, "schedule": True},
            "d3": {"meta": True, "priors": True, "decoder": True, "prior_labels": True},
            "d2m": {"meta": True, "generator": True, "teacher": False}}  # name → critical flag

__all__ = ["ENCODERS", "DECODERS", "SAMPLERS", "SCHEDULES", "SECTIONS", "DatasetSpec", "Encoded", "Encoder"]
