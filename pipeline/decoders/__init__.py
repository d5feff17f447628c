"""Model output formats: one module per format in this package, each registered by name.

A decoder has a name (the value of ``model.format`` and of a spec's ``output_format``), a shape
test (which outputs it can read, and how sure ``auto`` may be that one is its own), and a decode
function (one image's raw output to candidate boxes, scores and class ids). Thresholds, the class
filter, NMS and the mapping back to the frame are shared: :mod:`pipeline.postprocess`.

A new output format is one new module here that calls :func:`register`; the config, the spec,
``auto`` detection and the error messages all read this registry (:class:`~pipeline.registry.Registry`),
which imports every module here before it is first read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.errors import ModelError
from pipeline.registry import Registry

# How sure a decoder is that an output is in its format; ``auto`` takes the surest (lowest), ties
# going to the decoder listed first.
EXACT = 0  # a layout no other format has (end-to-end [B,N,6] with more than one class)
BY_CLASSES = 1  # an axis is the spec's class count plus the format's fixed columns
BY_SHAPE = 2  # only the proportions fit (no class names, or they did not match)

Shape = Sequence[object]  # an output's shape: ints, or names/None for dynamic axes
Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [N,4], scores [N], class ids [N]


@dataclass(frozen=True)
class OutputDecoder:
    """One output format."""

    name: str  # model.format / output_format value
    title: str  # for people: "YOLOv8/11"
    layout: str  # the shape it reads, in messages: "[B,4+C,N]"
    order: int  # place in listings and in auto's ties
    fits: Callable[[Shape, int | None], bool]  # can this format read an output of this shape (C or None)
    # one image's output (no batch axis) and the score threshold -> candidates; it may leave out
    # those scoring ``conf`` or less (the threshold is applied again after it)
    decode: Callable[[np.ndarray, float], Candidates]
    boxes: Literal["cxcywh", "xyxy"] = "cxcywh"  # the box columns decode returns
    nms: bool = True  # False: the model did NMS already
    per_class: bool = True  # the layout depends on the class count
    claim: Callable[[Shape, int | None], int | None] | None = None  # auto's rank; None: from fits

    def rank(self, shape: Shape, num_classes: int | None) -> int | None:
        """How sure ``auto`` may be that ``shape`` is this format (EXACT, BY_CLASSES, BY_SHAPE), or None."""
        if self.claim is not None:
            return self.claim(shape, num_classes)
        if num_classes and self.fits(shape, num_classes):
            return BY_CLASSES
        return BY_SHAPE if self.fits(shape, None) else None


# Each module of this package registers its format; they are found when the registry is first read.
FORMATS: Registry[OutputDecoder] = Registry("output format", __name__, error=ModelError)


def register(decoder: OutputDecoder) -> OutputDecoder:
    """Add an output format (a name taken twice is a bug in the decoder modules)."""
    if decoder.name == "auto":
        raise ValueError("output format 'auto' is registered twice")
    return FORMATS.register(decoder.name, decoder, decoder.order, replace=False)


def decoders() -> list[OutputDecoder]:
    """Every registered format, in listing order."""
    return [FORMATS[name] for name in FORMATS.names()]


def names() -> tuple[str, ...]:
    """The registered format names, in listing order."""
    return tuple(d.name for d in decoders())


def formats() -> tuple[str, ...]:
    """What ``model.format`` and a spec's ``output_format`` take: auto, then every registered format."""
    return ("auto", *names())


def get(name: str) -> OutputDecoder:
    """The decoder called ``name``; ModelError naming the known ones otherwise."""
    return FORMATS.lookup(name)


def detect(shape: Shape, num_classes: int | None = None) -> str | None:
    """The format ``auto`` picks for an output of ``shape``, or None when none can read it."""
    best: tuple[int, int] | None = None
    chosen = None
    for i, dec in enumerate(decoders()):
        rank = dec.rank(shape, num_classes)
        if rank is not None and (best is None or (rank, i) < best):
            best, chosen = (rank, i), dec.name
    return chosen


def expected(fmt: str = "auto", num_classes: int | None = None) -> str:
    """What an output of ``fmt`` looks like, for messages: "expected [B,4+C,N] YOLOv8/11, ... or ..."."""
    if fmt != "auto":
        dec = get(fmt)
        return f"expected {dec.layout}" + (f" with {num_classes} classes" if num_classes and dec.per_class else "")
    items = [f"{d.layout} {d.title}" for d in decoders()]
    return "expected " + (", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0])


def dims3(shape: Shape) -> tuple[int | None, int | None] | None:
    """``(d1, d2)`` of a ``[B, d1, d2]`` shape (None for a dynamic axis); None if it is not 3-D."""
    if len(shape) != 3:
        return None
    return tuple(d if isinstance(d, int) else None for d in shape[1:])  # type: ignore[return-value]


def fits_class_columns(shape: Shape, num_classes: int | None, axis: int, fixed: int) -> bool:
    """A ``[B, d1, d2]`` output whose ``axis`` (1 or 2) holds ``fixed`` columns then one score per
    class, the other axis the candidates: with a class count, that axis must be ``fixed + C``;
    without, it must be wider than ``fixed`` and shorter than the candidate axis."""
    dims = dims3(shape)
    if dims is None:
        return False
    columns, candidates = dims[axis - 1], dims[2 - axis]
    if num_classes:
        return columns == fixed + num_classes
    return columns is not None and columns > fixed and (candidates is None or candidates > columns)
