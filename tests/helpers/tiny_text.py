"""A tiny random flan-T5-shaped text encoder and tokenizer for tests and stand-in models (nothing downloaded)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

SPECIAL = ("<pad>", "</s>", "<unk>")
WORDS = tuple(
    "a an the of on in with and red blue green yellow white black cat dog fox bird car house tree sea beach "
    "mountain sky city wax seal letters vpg photo painting running walking close-up big objects emphasize "
    "scale detail".split()
)


def tiny_t5(channels: int = 128, words: Sequence[str] = WORDS):
    """A random T5 encoder (gated GELU, relative position buckets, ``channels`` wide) and a word-level
    tokenizer that appends ``</s>`` as T5's does; unknown words map to ``<unk>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

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
