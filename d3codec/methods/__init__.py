"""Distillation methods, each one module behind the :class:`~d3codec.methods.base.Encoder` interface.

``ENCODERS`` maps a method name to its encoder class; ``DECODERS`` maps it to the function that
turns an archive of that method back into images and labels; ``SECTIONS`` lists the critical
sections each method's decoder understands (a reader refuses any other critical section).
"""

from . import d3, pixel
from .base import DatasetSpec, Encoded, Encoder

ENCODERS = {"pixel": pixel.PixelEncoder, "d3": d3.D3Encoder}
DECODERS = {"pixel": pixel.decode, "d3": d3.decode}
SECTIONS = {"pixel": {"meta", "images", "soft_labels"}, "d3": {"meta", "priors", "decoder", "prior_labels"}}
SAMPLING_METHODS = {"d3"}  # methods whose decoder draws any number of samples per class

__all__ = ["ENCODERS", "DECODERS", "SECTIONS", "SAMPLING_METHODS", "DatasetSpec", "Encoded", "Encoder"]
