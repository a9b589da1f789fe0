"""Distillation methods, each one module behind the :class:`~d3codec.methods.base.Encoder` interface.

``ENCODERS`` maps a method name to its encoder class; ``DECODERS`` maps a method that stores its
images to the function that reads them back, ``decode(reader, meta)`` → (images, labels, soft
labels or None); ``SAMPLERS`` maps a method that generates its images (any number per class) to
``load_sampler(reader, meta, device)`` → ``draw(samples_per_class, seed)`` → the same triple;
``SCHEDULES`` maps a method whose archives may carry a training schedule to
``read_schedule(reader, meta)`` → d3codec.schedule.TrainingSchedule or None; ``SECTIONS`` lists
the sections each method's decoder understands (a reader refuses any other critical section and
skips any other ancillary one).
"""

from . import bptt, d2m, d3, pixel
from .base import DatasetSpec, Encoded, Encoder

ENCODERS = {"pixel": pixel.PixelEncoder, "d3": d3.D3Encoder, "d2m": d2m.D2MEncoder}
DECODERS = {"pixel": pixel.decode}
SAMPLERS = {"d3": d3.load_sampler, "d2m": d2m.load_sampler}
SCHEDULES = {"pixel": bptt.read_schedule}
SECTIONS = {"pixel": {"meta", "images", "soft_labels", "schedule"}, "d3": {"meta", "priors", "decoder", "prior_labels"},
            "d2m": {"meta", "generator", "teacher"}}

__all__ = ["ENCODERS", "DECODERS", "SAMPLERS", "SCHEDULES", "SECTIONS", "DatasetSpec", "Encoded", "Encoder"]
