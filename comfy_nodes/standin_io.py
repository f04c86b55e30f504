"""A stand-in for ComfyUI's schema API (``comfy_api.latest.io``), used when ComfyUI is not importable.

It holds only the constructors this pack uses (``Schema``, ``ComfyNode``, ``NodeOutput``, the ``Int`` /
``Float`` / ``String`` / ``Boolean`` / ``Combo`` / ``Image`` / ``Video`` inputs and outputs, ``Custom``
types, ``ComfyExtension``). Each records its arguments as data and reports a node the way ComfyUI's
``GET_NODE_INFO_V1`` does (what ``GET /object_info`` sends), so CI checks the shipped workflows against
the real node classes without ComfyUI; ``tests/comfy/test_comfy_nodes.py`` compares the two reports
under a real ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


def _pruned(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class _Input:
    """One node input; ``KEYS`` are the keyword arguments of its ComfyUI counterpart that this pack uses."""

    io_type: ClassVar[str] = ""
    KEYS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, lazy: bool | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.KEYS))
        if unknown:
            raise TypeError(f"{type(self).__qualname__}() got unexpected keyword arguments {unknown}")
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        for key in self.KEYS:
            setattr(self, key, options.get(key))

    def get_io_type(self) -> str:
        return self.io_type

    def as_dict(self) -> dict[str, Any]:
        """What ComfyUI reports for the input in ``/object_info`` (``None`` entries left out, as ComfyUI does)."""
        return _pruned({"display_name": self.display_name, "tooltip": self.tooltip, "lazy": self.lazy,
                        **{key: getattr(self, key) for key in self.KEYS}})


class _Output:
    io_type: ClassVar[str] = ""

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False) -> None:
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _comfy_type(name: str, io_type: str, input_keys: tuple[str, ...] = (), **as_dict_extra: Any) -> type:
    """A ComfyUI type (``io.Float`` ...) with its ``Input`` and ``Output`` classes."""
    extra = dict(as_dict_extra)

    class Input(_Input):
        KEYS = input_keys

        def as_dict(self) -> dict[str, Any]:
            return {**extra, **super().as_dict()}

    class Output(_Output):
        pass

    Input.io_type = Output.io_type = io_type
    Input.__qualname__, Output.__qualname__ = f"{name}.Input", f"{name}.Output"
    return type(name, (), {"io_type": io_type, "Input": Input, "Output": Output})


_NUMBER = ("default", "min", "max", "step")
Int = _comfy_type("Int", "INT", (*_NUMBER, "control_after_generate"))
Float = _comfy_type("Float", "FLOAT", (*_NUMBER, "round"))
String = _comfy_type("String", "STRING", ("default", "multiline", "placeholder"), multiline=False)
Boolean = _comfy_type("Boolean", "BOOLEAN", ("default", "label_on", "label_off"))
Combo = _comfy_type("Combo", "COMBO", ("options", "default"), multiselect=False)
Image = _comfy_type("Image", "IMAGE")
Video = _comfy_type("Video", "VIDEO")


def Custom(io_type: str) -> type:  # noqa: N802 (ComfyUI's name)
    """A socket type of the pack's own (``VPG_MODEL`` ...)."""
    return _comfy_type(f"Custom[{io_type}]", io_type)


@dataclass
class Schema:
    """A node's definition, as ComfyUI's ``io.Schema`` (the fields this pack uses)."""

    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[_Input] = field(default_factory=list)
    outputs: list[_Output] = field(default_factory=list)
    description: str = ""
    is_output_node: bool = False
    is_experimental: bool = False
    is_deprecated: bool = False

    def finalize(self) -> None:
        """ComfyUI gives outputs without an id the id ``_{slot}_{type}_``."""
        for slot, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{slot}_{output.io_type}_"

    def validate(self) -> None:
        ids = [i.id for i in self.inputs] + [o.id for o in self.outputs]
        if len(ids) != len(set(ids)):
            raise ValueError(f"{self.node_id}: input and output ids must be unique, got {ids}")

    def v1_info(self) -> dict[str, Any]:
        """The node as ``GET /object_info`` reports it."""
        inputs: dict[str, dict[str, Any]] = {"required": {}}
        for i in self.inputs:
            inputs.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), i.as_dict())
        return {
            "input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
            "output": [o.io_type for o in self.outputs], "output_is_list": [o.is_output_list for o in self.outputs],
            "output_name": [o.display_name or o.io_type for o in self.outputs],
            "output_tooltips": [o.tooltip for o in self.outputs], "name": self.node_id,
            "display_name": self.display_name, "description": self.description, "python_module": "nodes",
            "category": self.category, "output_node": self.is_output_node, "deprecated": self.is_deprecated,
            "experimental": self.is_experimental, "api_node": False,
        }


class NodeOutput:
    """A node's result: ``result`` is the tuple of output values (``None`` when there are none)."""

    def __init__(self, *args: Any, ui: Any = None) -> None:
        self.args, self.ui = args, ui

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.args if self.args else None


class ComfyNode:
    """Base of a node class: ``define_schema`` and ``execute`` are the node's own classmethods."""

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **inputs: Any) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:  # noqa: N802 (ComfyUI's name)
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        return schema

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict[str, Any]:  # noqa: N802 (ComfyUI's name)
        return cls.GET_SCHEMA().v1_info()


class ComfyExtension:
    """What ``comfy_entrypoint`` returns: ComfyUI asks it for the node classes."""

    async def on_load(self) -> None:
        return None

    async def get_node_list(self) -> list[type[ComfyNode]]:
        raise NotImplementedError
