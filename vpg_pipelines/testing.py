"""Stand-ins shared by the tests, the benchmarks and the headless ComfyUI run (diffusers' and transformers'
``testing_utils`` convention): a tiny random flan-T5-shaped text encoder and the settings the shared InfinityStar
parity fixture (``../shared/parity/infinity_star``) was made with. Nothing here is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

STAR_PARITY_ARGS = {
    "pn": "0.06M",
    "image_scale_repetition": [3] * 11,
    "video_scale_repetition": [3] * 8 + [2, 1, 1],
    "semantic_scales": 8,
    "detail_scale_min_tokens": 100,
}
"""The official ``Args`` the InfinityStar parity fixture used on top of the 720p script's (its README): the
"0.06M" schedule, 11 scales per clip."""
STAR_FAST_ARGS = {**STAR_PARITY_ARGS, "image_scale_repetition": [1] * 11, "video_scale_repetition": [1] * 11}
"""The same with one repetition per scale: a third of the steps, for tests that need a video, not parity."""

SPECIAL = ("<pad>", "</s>", "<unk>")
WORDS = tuple(
    "a an the of on in with and red blue green yellow white black cat dog fox bird car house tree sea beach "
    "mountain sky city wax seal letters vpg photo painting running walking close-up big objects emphasize "
    "scale detail".split()
)


def tiny_t5(channels: int = 128, words: Sequence[str] = WORDS) -> tuple[T5EncoderModel, PreTrainedTokenizerFast]:
    """A random T5 encoder (gated GELU, relative position buckets, ``channels`` wide, seeded) and a word-level
    tokenizer that appends ``</s>`` as T5's does; unknown words map to ``<unk>``."""
    vocab = {w: i for i, w in enumerate(SPECIAL)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=512)
    config = T5Config(vocab_size=len(vocab), d_model=channels, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    torch.manual_seed(0)
    return T5EncoderModel(config).eval(), tokenizer
