"""Benchmark protocols: ``imagenet`` (VAR), ``geneval`` and ``dpg`` (Infinity), ``vbench`` (InfinityStar)."""

from .base import Protocol, Sample, sampling_settings
from .dpg import DPGProtocol
from .geneval import GenEvalProtocol
from .imagenet import ImageNetProtocol, parse_classes
from .vbench import VBenchProtocol

PROTOCOLS: dict[str, type[Protocol]] = {p.name: p for p in (ImageNetProtocol, GenEvalProtocol, DPGProtocol,
                                                             VBenchProtocol)}

__all__ = ["PROTOCOLS", "DPGProtocol", "GenEvalProtocol", "ImageNetProtocol", "Protocol", "Sample",
           "VBenchProtocol", "parse_classes", "sampling_settings"]
