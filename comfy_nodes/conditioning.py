"""The conditioning nodes: class names or ids (VAR) and prompts (Infinity, InfinityStar) -> ``VPG_COND``."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .api import io
from .errors import check_widgets, fail, title
from .memory import place_for_text_encoding
from .model import CATEGORY, VPG_COND, VPGModel, model_input, vpg_model


@dataclass(frozen=True)
class ClassConditioning:
    """Class ids for a class-conditional model; ``num_classes`` and ``source`` let the sampler reject
    conditioning made for another model."""

    class_ids: tuple[int, ...]
    names: tuple[str, ...]
    num_classes: int
    source: str


@dataclass(frozen=True)
class TextConditioning:
    """A prompt for a text model.

    Infinity: T5 features of the prompt (``embeds`` ``(1, L, C)`` + ``mask``) and, when a negative prompt is
    given, of it, encoded by the node with the pipeline's ``encode_prompt``. InfinityStar: the texts only;
    its official caption carries the clip duration (``<<<t=5s>>>``), known only to the sampler, so the
    pipeline encodes them there with the same T5.
    """

    prompt: str
    negative_prompt: str
    source: str
    kind: str
    embeds: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    negative_embeds: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None


def class_names(model: VPGModel) -> list[str]:
    """The model's class names (first synonym of each class, by id)."""
    id2label = model.pipeline.config.id2label
    return [id2label[k].split(",")[0].strip() for k in sorted(id2label, key=int)]


class VPGClassConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGClassConditioning",
            display_name="VPG Class Conditioning",
            category=CATEGORY,
            description="The classes to generate: names (any synonym, case-insensitive) or ids, separated by "
                        "commas or lines.",
            inputs=[
                model_input(),
                io.String.Input("classes", default="face-happy", multiline=True,
                                tooltip="Class names or ids, e.g. 'golden retriever, 980' (ImageNet), 'face-happy' "
                                        "(demo)."),
            ],
            outputs=[VPG_COND.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, model: VPGModel, classes: str) -> io.NodeOutput:
        model = vpg_model(title(cls), model)
        if model.kind.conditioning != "class":
            raise fail(cls, f"{model.source} is a text-conditioned model; use VPG Text Encode.")
        check_widgets(cls, classes=classes)
        items = [p.strip() for p in re.split(r"[,\n;]+", classes) if p.strip()]
        names = class_names(model)
        if not items:
            raise fail(cls, f"`classes` is empty; give class names or ids, e.g. {', '.join(names[:3])}")
        ids: list[int] = []
        shown = []
        for item in items:
            if re.fullmatch(r"\d+", item):
                if not 0 <= int(item) < len(names):
                    raise fail(cls, f"class id {item} is out of range [0, {len(names) - 1}]")
                ids.append(int(item))
            else:
                try:
                    ids.extend(model.pipeline.get_label_ids(item))
                except ValueError as err:
                    listing = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
                    message = str(err).replace("`prompt` class name", "class name")
                    raise fail(cls, f"{message} This model's classes: {listing}") from err
            shown.append(names[ids[-1]])
        return io.NodeOutput(ClassConditioning(tuple(ids), tuple(shown), len(names), model.source))


class VPGTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VPGTextEncode",
            display_name="VPG Text Encode",
            category=CATEGORY,
            description="The prompt of a text model (Infinity, InfinityStar), encoded with the model's own T5 "
                        "(Infinity: here; InfinityStar: in the sampler, because its official caption carries the "
                        "video duration).",
            inputs=[
                model_input(),
                io.String.Input("prompt", default="a red fox in the snow, photo", multiline=True,
                                tooltip="What to generate."),
                io.String.Input("negative_prompt", default="", multiline=True,
                                tooltip="Replaces the learned null text of CFG/APG; empty keeps it (the official "
                                        "default)."),
            ],
            outputs=[VPG_COND.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, model: VPGModel, prompt: str, negative_prompt: str) -> io.NodeOutput:
        model = vpg_model(title(cls), model)
        if model.kind.conditioning != "text":
            raise fail(cls, f"{model.source} is a class-conditional model; use VPG Class Conditioning.")
        check_widgets(cls, prompt=prompt, negative_prompt=negative_prompt)
        prompt, negative_prompt = prompt.strip(), negative_prompt.strip()
        if not prompt:
            raise fail(cls, "`prompt` is empty; describe the image or video to generate.")
        pipe = model.pipeline
        if pipe.text_encoder is None or pipe.tokenizer is None:
            raise fail(cls, f"{model.source} was loaded without a text encoder; pick the T5 folder (flan-t5-xl) "
                            "as `text_encoder` in VPG Load Model.")
        if model.kind.media == "video":
            return io.NodeOutput(TextConditioning(prompt, negative_prompt, model.source, model.kind.name))
        place_for_text_encoding(model)
        device = next(pipe.text_encoder.parameters()).device
        embeds, mask = pipe.encode_prompt(prompt, device=device)
        negative: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if negative_prompt:
            neg_embeds, neg_mask = pipe.encode_prompt(negative_prompt, device=device)
            negative = (neg_embeds.cpu(), neg_mask.cpu())
        return io.NodeOutput(TextConditioning(prompt, negative_prompt, model.source, model.kind.name, embeds.cpu(),
                                              mask.cpu(), *negative))
