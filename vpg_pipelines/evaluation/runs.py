"""Building one ``vpg eval`` run from the flags: the process state, the model, the protocol, the run spec and the
feature network of the metrics (shared by ``vpg eval sample`` / ``fid`` and ``vpg eval sweep``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from accelerate import PartialState

from ..devices import default_dtype, pick_device
from ..flags import DTYPES, read_json_object
from ..loading.auto import SourceError, load_pipeline, source_kind
from .fid import ClassifierNet, InceptionNet
from .protocols import (
    PROTOCOLS,
    DPGProtocol,
    GenEvalProtocol,
    ImageNetProtocol,
    VBenchProtocol,
    parse_classes,
    sampling_settings,
)
from .sampler import RunSpec

OVERRIDE_FLAGS = ("guidance_scale", "top_k", "top_p", "tau", "height", "width", "num_frames", "negative_prompt",
                  "vpg_scale", "vpg_corruption", "vpg_mode", "vpg_refresh", "vpg_scales")
SOURCE_FLAGS = {"source": "--model", "companion": "--vae", "config": "--config"}
"""The loader's argument names (:class:`~vpg_pipelines.loading.auto.SourceError`) as flags."""


def make_state(cpu: bool) -> PartialState:
    """This process's Accelerate state: its accelerator (CUDA / ROCm, XPU, MPS; Accelerate picks the one
    :func:`~vpg_pipelines.devices.pick_device` would) unless ``cpu`` or the machine has none."""
    return PartialState(cpu=cpu or pick_device().type == "cpu")


def _model_id(args: argparse.Namespace) -> str:
    if args.model == "demo":
        return "demo"
    ids = [str(Path(args.model).expanduser().resolve())]
    ids += [f"{flag}={Path(v).expanduser().resolve()}" for flag, v in (("vae", args.vae), ("config", args.config)) if v]
    return " ".join(ids)


def make_protocol(name: str, args: argparse.Namespace, pipe):
    """The protocol object from the flags; flags of other protocols are refused by name."""
    prompts, per_prompt, limit = (getattr(args, k, None) for k in ("prompts", "per_prompt", "limit"))
    if name == "imagenet":
        if prompts is not None or per_prompt is not None or limit is not None:
            raise ValueError("--prompts, --per-prompt and --limit apply to geneval, dpg and vbench; imagenet takes "
                             "--classes and --per-class")
        classes = parse_classes(args.classes, pipe.transformer.config.num_classes)
        return ImageNetProtocol(classes, 50 if args.per_class is None else args.per_class)
    if args.classes is not None or args.per_class is not None:
        raise ValueError(f"--classes and --per-class apply to imagenet, not {name}")
    if name == "geneval":
        return GenEvalProtocol(prompts, 4 if per_prompt is None else per_prompt, limit)
    if name == "dpg":
        if per_prompt not in (None, 4):
            raise ValueError("dpg: --per-prompt is fixed at 4 (the evaluator reads a 2 x 2 grid)")
        return DPGProtocol(prompts, limit)
    return VBenchProtocol(prompts, 5 if per_prompt is None else per_prompt, limit, fps=pipe.fps)


def load_for(name: str, args: argparse.Namespace, state):
    """Check the model kind against the protocol and load it onto this process's device."""
    try:
        kind = source_kind(args.model)
        wanted = PROTOCOLS[name].pipeline
        if kind.class_name != wanted:
            raise ValueError(f"--model {args.model} is a {kind.class_name}; the {name} protocol samples a {wanted}")
        preferred = default_dtype(kind.gpu_dtype, state.device)
        dtype_name = args.dtype or next((n for n, d in DTYPES.items() if d == preferred), "fp32")
        dtype = DTYPES[dtype_name] if (args.dtype or preferred is not None) else None
        pipe = load_pipeline(args.model, args.vae, read_json_object(args.config, "--config"), dtype)
    except SourceError as err:
        raise ValueError(f"{SOURCE_FLAGS.get(err.argument, err.argument)} {err.detail}") from None
    pipe = pipe.to(state.device)
    return pipe, dtype_name


def make_spec(name: str, args: argparse.Namespace, pipe, dtype_name: str, out: Path | None = None,
              overrides: dict[str, Any] | None = None):
    protocol = make_protocol(name, args, pipe)
    flags = {k: getattr(args, k, None) for k in OVERRIDE_FLAGS}
    flags.update(dict(args.call_arg))
    flags.update(overrides or {})
    call = sampling_settings(pipe, protocol.sampling_keys, protocol.preset(args.preset, pipe), flags)
    call = protocol.complete(call, pipe, args.preset)
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    chunk = protocol.default_chunk_size if args.chunk_size is None else args.chunk_size
    return RunSpec(protocol=protocol, out=Path(out or args.out), model=_model_id(args), pipeline=protocol.pipeline,
                   seed=args.seed, chunk_size=chunk, batch_size=chunk if args.batch_size is None else args.batch_size,
                   dtype=dtype_name, call=call, extra={"preset": args.preset})


def feature_net(args: argparse.Namespace, device):
    if args.metric_batch_size < 1:
        raise ValueError(f"--metric-batch-size must be >= 1, got {args.metric_batch_size}")
    if args.classifier:
        return ClassifierNet(args.classifier, device), "classifier"
    return InceptionNet(args.inception_weights, device), "inception"
