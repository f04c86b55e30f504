"""ComfyUI workflow files (test-side): check a UI-format graph against node definitions, convert it to
API format (what ComfyUI's frontend does in the browser).

Node definitions come from ``/object_info``-shaped data: a running server's answer, or the node classes'
own ``GET_NODE_INFO_V1()`` (the pack's classes, with or without ComfyUI). Only the parts of the UI format
that the shipped workflows use are handled: plain nodes, links, notes; no groups of nodes, no reroutes.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
FRONTEND_ONLY = ("Note", "MarkdownNote")
"""Node types that exist only in the frontend (never sent to the server)."""
UPLOAD_KEYS = ("image_upload", "video_upload", "audio_upload", "file_upload")
"""Options that give a file list an upload button (Load Image, Load Video ...): the frontend saves that button as
one more widget value (``"image"``) after the file's, and never sends it to the server."""


@dataclass(frozen=True)
class InputDef:
    name: str
    type: str
    widget: bool
    optional: bool = False
    options: tuple | None = None
    min: float | None = None
    max: float | None = None
    control_after_generate: bool = False
    upload: bool = False


@dataclass(frozen=True)
class NodeDef:
    node_id: str
    inputs: tuple[InputDef, ...]
    outputs: tuple[str, ...]

    @property
    def widgets(self) -> list[InputDef]:
        return [i for i in self.inputs if i.widget]

    def input(self, name: str) -> InputDef | None:
        return next((i for i in self.inputs if i.name == name), None)


def defs_from_object_info(object_info: Mapping[str, Any]) -> dict[str, NodeDef]:
    """Node definitions from ComfyUI's ``/object_info`` answer (classic and schema-API nodes alike)."""
    out = {}
    for node_id, info in object_info.items():
        inputs = []
        order = info.get("input_order") or {k: list(v) for k, v in info.get("input", {}).items()}
        for group in ("required", "optional"):
            for name in order.get(group, []):
                spec = info["input"][group][name]
                kind, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
                options = None
                if isinstance(kind, list):
                    kind, options = "COMBO", tuple(kind)
                elif kind == "COMBO":
                    options = tuple(opts.get("options", ()))
                widget = kind in WIDGET_TYPES and not opts.get("forceInput", False)
                inputs.append(InputDef(name, kind, widget, group == "optional", options, opts.get("min"),
                                       opts.get("max"), bool(opts.get("control_after_generate", False)),
                                       any(opts.get(key) for key in UPLOAD_KEYS)))
        out[node_id] = NodeDef(node_id, tuple(inputs), tuple(info.get("output", ())))
    return out


def _value_error(inp: InputDef, value: Any) -> str | None:
    if inp.type == "INT":
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif inp.type == "FLOAT":
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif inp.type == "BOOLEAN":
        ok = isinstance(value, bool)
    elif inp.type == "STRING":
        ok = isinstance(value, str)
    else:  # COMBO
        if inp.options is not None and value not in inp.options:
            return f"{inp.name}={value!r} is not one of {list(inp.options)}"
        return None
    if not ok:
        return f"{inp.name}={value!r} is not a {inp.type}"
    if inp.min is not None and value < inp.min:
        return f"{inp.name}={value!r} is below the minimum {inp.min}"
    if inp.max is not None and value > inp.max:
        return f"{inp.name}={value!r} is above the maximum {inp.max}"
    return None


def widget_values(node: Mapping[str, Any], ndef: NodeDef) -> tuple[dict[str, Any], list[str]]:
    """Map a UI node's ``widgets_values`` list to input names (skipping seeds' control values and upload
    buttons)."""
    values = list(node.get("widgets_values") or [])
    named, errors, pos = {}, [], 0
    for inp in ndef.widgets:
        if pos >= len(values):
            errors.append(f"widgets_values has no value for {inp.name!r}")
            break
        named[inp.name] = values[pos]
        pos += 1
        if inp.control_after_generate:
            if pos >= len(values) or values[pos] not in CONTROL_VALUES:
                got = values[pos] if pos < len(values) else "nothing"
                errors.append(f"{inp.name!r} is followed by its control value {CONTROL_VALUES}, got {got!r}")
            pos += 1
        elif inp.upload:  # the upload button's value (the frontend writes "image" for every kind of file)
            if pos >= len(values) or not isinstance(values[pos], str):
                got = values[pos] if pos < len(values) else "nothing"
                errors.append(f"{inp.name!r} is followed by its upload button's value ('image'), got {got!r}")
            pos += 1
    if pos < len(values) and not errors:
        errors.append(f"widgets_values has {len(values)} entries, the node's widgets take {pos}")
    return named, errors


def validate(workflow: Mapping[str, Any], defs: Mapping[str, NodeDef]) -> list[str]:
    """Every problem found in a UI-format workflow (empty when it is consistent with ``defs``)."""
    errors: list[str] = []
    for key in ("nodes", "links", "last_node_id", "last_link_id"):
        if key not in workflow:
            errors.append(f"missing top-level key {key!r} (not a UI-format workflow)")
    if errors:
        return errors
    nodes = {n["id"]: n for n in workflow["nodes"]}
    if len(nodes) != len(workflow["nodes"]):
        errors.append("duplicate node ids")
    if nodes and workflow["last_node_id"] < max(nodes):
        errors.append(f"last_node_id {workflow['last_node_id']} is below the largest node id {max(nodes)}")
    links = {link[0]: link for link in workflow["links"]}
    if links and workflow["last_link_id"] < max(links):
        errors.append(f"last_link_id {workflow['last_link_id']} is below the largest link id {max(links)}")

    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        ndef = defs.get(node["type"])
        if ndef is None:
            errors.append(f"{where}: unknown node type")
            continue
        _, werr = widget_values(node, ndef)
        errors += [f"{where}: {e}" for e in werr]
        named, _ = widget_values(node, ndef)
        for inp in ndef.widgets:
            if inp.name in named and (e := _value_error(inp, named[inp.name])):
                errors.append(f"{where}: {e}")
        connected = set()
        for slot, sock in enumerate(node.get("inputs", [])):
            inp = ndef.input(sock["name"])
            if inp is None or inp.widget:
                errors.append(f"{where}: input slot {slot} {sock['name']!r} is not a socket input of this node")
                continue
            if sock.get("type") != inp.type:
                errors.append(f"{where}: input {sock['name']!r} declared as {sock.get('type')!r}, expects {inp.type!r}")
            if sock.get("link") is not None:
                connected.add(inp.name)
                link = links.get(sock["link"])
                if link is None or link[3] != node["id"] or link[4] != slot:
                    errors.append(f"{where}: input {sock['name']!r} names link {sock['link']}, which does not end here")
        for inp in ndef.inputs:
            if not inp.widget and not inp.optional and inp.name not in connected:
                errors.append(f"{where}: required input {inp.name!r} ({inp.type}) is not connected")
        for slot, out in enumerate(node.get("outputs", [])):
            if slot >= len(ndef.outputs) or out.get("type") != ndef.outputs[slot]:
                errors.append(f"{where}: output slot {slot} declared {out.get('type')!r}, node gives "
                              f"{ndef.outputs[slot] if slot < len(ndef.outputs) else 'nothing'}")
            for link_id in out.get("links") or []:
                if link_id not in links or links[link_id][1] != node["id"] or links[link_id][2] != slot:
                    errors.append(f"{where}: output {slot} lists link {link_id}, which does not start here")

    for link_id, src, src_slot, dst, dst_slot, ltype in workflow["links"]:
        where = f"link {link_id}"
        if src not in nodes or dst not in nodes:
            errors.append(f"{where}: connects missing nodes {src} -> {dst}")
            continue
        sdef, ddef = defs.get(nodes[src]["type"]), defs.get(nodes[dst]["type"])
        if sdef is None or ddef is None:
            continue  # reported above
        if src_slot >= len(sdef.outputs):
            errors.append(f"{where}: {nodes[src]['type']} has no output {src_slot}")
            continue
        sockets = nodes[dst].get("inputs", [])
        if dst_slot >= len(sockets):
            errors.append(f"{where}: node {dst} has no input slot {dst_slot}")
            continue
        target = ddef.input(sockets[dst_slot]["name"])
        out_type = sdef.outputs[src_slot]
        if target is None or target.type != out_type or ltype != out_type:
            errors.append(f"{where}: {nodes[src]['type']}.{src_slot} gives {out_type}, "
                          f"{nodes[dst]['type']}.{sockets[dst_slot]['name']} takes "
                          f"{target.type if target else '?'} (link typed {ltype})")
    return errors


def to_api(workflow: Mapping[str, Any], defs: Mapping[str, NodeDef]) -> dict[str, dict]:
    """The API-format prompt (``POST /prompt``'s ``prompt``) of a valid UI-format workflow."""
    errors = validate(workflow, defs)
    if errors:
        raise ValueError("workflow does not match the node definitions:\n" + "\n".join(errors))
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) == 2:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']}: mode {node['mode']} (bypass) is not supported by this converter")
        named, _ = widget_values(node, defs[node["type"]])
        for sock in node.get("inputs", []):
            if sock.get("link") is not None:
                link = links[sock["link"]]
                named[sock["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": named}
    return prompt
