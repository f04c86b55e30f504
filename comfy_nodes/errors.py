"""Node errors in the node's language: the one input checker and the one "run the pipeline, translate its
error" helper.

Every error a node raises is a plain ``ValueError`` whose message starts with the node's title (ComfyUI
shows the exception's type next to the message, and a class of ours would read as a file path) and names
the widget as the user sees it, with what it allows.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .api import io

PREFIX_NODE = "VPG Prefix Guidance"
GUIDANCE_NODES = "VPG CFG / VPG APG"
WIDGET_OF_ARGUMENT: dict[str, tuple[str, str | None]] = {
    "vpg_scale": ("vpg_scale", PREFIX_NODE),
    "vpg_corruption": ("corruption", PREFIX_NODE),
    "vpg_mode": ("mode", PREFIX_NODE),
    "vpg_refresh": ("refresh", PREFIX_NODE),
    "vpg_scales": ("scales", PREFIX_NODE),
    "guidance_scale": ("cfg", GUIDANCE_NODES),
    "apg_norm_threshold": ("norm_threshold", "VPG APG"),
    "num_images_per_prompt": ("batch_size", None),
    "num_videos_per_prompt": ("batch_size", None),
    "height": ("size", None),
    "width": ("size", None),
    "image": ("start_image", None),
    "class_labels": ("classes", "VPG Class Conditioning"),
    "prompt": ("prompt", "VPG Text Encode"),
    "acceleration": ("preset", "VPG Accelerate"),
    "context_latents": ("story", None),
}
"""A pipeline argument -> the widget that sets it, and the node that widget is on (``None``: the node
running the pipeline)."""
MAX_LISTED_CHOICES = 8
Widgets = dict[str, tuple[str, str | None]]


def title(node: type[io.ComfyNode]) -> str:
    """The node's title as ComfyUI shows it (its schema's display name)."""
    return node.define_schema().display_name


def fail(node: type[io.ComfyNode] | str, message: str) -> ValueError:
    """The error to raise: ``"<title>: <message>"``."""
    return ValueError(f"{node if isinstance(node, str) else title(node)}: {message}")


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _problem(widget: Any, value: Any) -> str | None:
    """What is wrong with ``value`` for ``widget`` (an input of the node's schema), or ``None``."""
    low, high = getattr(widget, "min", None), getattr(widget, "max", None)
    span = f" in [{_number(low)}, {_number(high)}]" if low is not None and high is not None else (
        f" >= {_number(low)}" if low is not None else "")
    if isinstance(widget, io.Combo.Input):
        if value in widget.options:
            return None
        if len(widget.options) > MAX_LISTED_CHOICES:  # e.g. ~100 sizes: name a few, point at the list
            shown = ", ".join(repr(o) for o in widget.options[:3])
            return f"must be one of the {len(widget.options)} choices in its list ({shown}, ...)"
        return f"must be one of {', '.join(repr(o) for o in widget.options)}"
    if isinstance(widget, io.Int.Input):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        kind = "a whole number"
    elif isinstance(widget, io.Float.Input):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        kind = "a number"
    elif isinstance(widget, io.Boolean.Input):
        return None if isinstance(value, bool) else "must be true or false"
    elif isinstance(widget, io.String.Input):
        return None if isinstance(value, str) else "must be text"
    else:
        return None
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    return None if ok else f"must be {kind}{span}"


def check_widgets(node: type[io.ComfyNode], **values: Any) -> None:
    """Check widget values against the node's own schema (type, range, choices; NaN is never in range).

    ComfyUI checks ranges before a run, but lets NaN and (for schema-API nodes) off-list choices through,
    and scripts call ``execute`` directly; the schema is the one place the ranges are written.
    """
    schema = node.define_schema()
    widgets = {i.id: i for i in schema.inputs}
    for name, value in values.items():
        problem = _problem(widgets[name], value)
        if problem:
            raise fail(schema.display_name, f"`{name}` {problem}, got {value!r}")


def index_ranges(indices: Sequence[int]) -> str:
    """``[6, 7, 8, 10]`` -> ``"6-8, 10"``."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def in_widget_names(message: str, node_title: str, widgets: Widgets | None = None) -> str:
    """A pipeline's message with its argument names replaced by the widgets that set them (``widgets``: the
    node's own entries over :data:`WIDGET_OF_ARGUMENT`)."""
    names = {**WIDGET_OF_ARGUMENT, **(widgets or {})}

    def widget(match: re.Match) -> str:
        name = match.group(1)
        if name not in names:
            return match.group(0)
        widget_name, owner = names[name]
        return f"`{widget_name}`" + (f" (of {owner})" if owner and owner != node_title else "")

    return re.sub(r"`(\w+)`", widget, message)


@contextlib.contextmanager
def translated(node_title: str, widgets: Widgets | None = None) -> Iterator[None]:
    """Re-raise a pipeline's ``ValueError`` / ``TypeError`` as the node's: its title, the widget names.

    Errors that already carry the title (the node's own checks) pass unchanged.
    """
    try:
        yield
    except (TypeError, ValueError) as err:
        text = str(err)
        if text.startswith(f"{node_title}: "):
            raise
        raise ValueError(f"{node_title}: {in_widget_names(text, node_title, widgets)}") from err


def run_pipeline(node_title: str, pipeline: Any, call: dict[str, Any],
                 prepare: Callable[[dict[str, Any]], None] | None = None, widgets: Widgets | None = None) -> Any:
    """``prepare(call)`` (memory planning), then ``pipeline(**call)``, their errors in the node's language."""
    with translated(node_title, widgets):
        if prepare is not None:
            prepare(call)
        return pipeline(**call)
