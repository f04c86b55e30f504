"""``pipe.estimate_memory(...)`` for the three pipelines."""

from __future__ import annotations

from typing import Any

import torch

from . import MemoryEstimate, estimate_memory


class MemoryPlanningMixin:
    """Adds :meth:`estimate_memory` to a VPG pipeline."""

    def estimate_memory(
        self,
        *,
        dtype: torch.dtype | None = None,
        quantization: str | None = None,
        text_tokens: int | None = None,
        stream: bool = True,
        **call_kwargs: Any,
    ) -> MemoryEstimate:
        """Plan the accelerator memory of ``self(**call_kwargs)`` before running it.

        Returns a :class:`~vpg_pipelines.memory.MemoryEstimate`: weights per component, the K/V cache
        step by step (exact, VPG's corrupted rows joining and leaving included), the largest step's
        activations, decoding and the text encoder, and the peak (with the phase holding it) for each
        offload mode (``none``, ``model``, ``group``, ``sequential``). ``print()`` it for a summary.

        Args:
            dtype, quantization: plan for another compute dtype / weight format of the transformer
                (``"none"``, ``"int8"``, ``"nf4"``, ``"fp8"``) than the loaded one.
            text_tokens: prompt length to plan with when there is no tokenizer.
            stream: group offloading with CUDA streams (two blocks resident).
            **call_kwargs: the arguments the call would get (checked like the call checks them).
        """
        return estimate_memory(self, dtype=dtype, quantization=quantization, text_tokens=text_tokens,
                               stream=stream, **call_kwargs)
