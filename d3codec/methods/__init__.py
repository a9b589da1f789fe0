"""Distillation methods, each one module behind the :class:`~d3codec.methods.base.Encoder` interface.

``ENCODERS`` maps a method name to its encoder class; ``DECODERS`` maps it to the function that
turns an archive of that method back into images and labels; ``SECTIONS`` lists the critical
sections each method's decoder understands (a reader refuses any other critical section).
"""

from . import pixel
from .base import DatasetSpec, Encoded, Encoder

ENCODERS = {"pixel": pixel.PixelEncoder}
DECODERS = {"pixel": pixel.decode}
SECTIONS = {"pixel": {"meta", "images", "soft_labels"}}

__all__ = ["ENCODERS", "DECODERS", "SECTIONS", "DatasetSpec", "Encoded", "Encoder"]
