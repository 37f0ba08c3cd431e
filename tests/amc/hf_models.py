"""Tiny random-init Hugging Face models built from configs (no download), wrapped so forward returns logits.

A test helper only: the product's ``hf:`` loader lives elsewhere. Every builder needs ``transformers``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Logits(nn.Module):
    """``inner(pixel_values=x).logits`` (image models) or ``inner(input_ids=x.long()).logits`` (text models:
    token ids come as a float tensor, so the project's float example inputs drive them; out-of-range values,
    such as the latency timer's random inputs, are clamped into the vocabulary)."""

    def __init__(self, inner: nn.Module, text: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.text = text

    def forward(self, x: Tensor) -> Tensor:
        if self.text:
            vocab = self.inner.config.vocab_size  # random timing inputs become valid ids too
            return self.inner(input_ids=x.long().clamp(0, vocab - 1)).logits
        return self.inner(pixel_values=x).logits


def _seeded(build):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build().eval()


def hf_vit(attn: str = "eager", num_labels: int = 5) -> Logits:
    """ViTForImageClassification: 2 layers of 32 wide, 4 heads, 8x8 images in 4x4 patches."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=8, patch_size=4, num_channels=3, num_labels=num_labels, attn_implementation=attn)
    return _seeded(lambda: Logits(ViTForImageClassification(config)))


def hf_bert(attn: str = "eager", num_labels: int = 5) -> Logits:
    """BertForSequenceClassification: 2 layers of 32 wide, 4 heads, a vocabulary of 50."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=num_labels,
                        attn_implementation=attn)
    return _seeded(lambda: Logits(BertForSequenceClassification(config), text=True))


def hf_llama(attn: str = "eager", num_labels: int = 5) -> Logits:
    """LlamaForSequenceClassification with grouped-query attention: 4 query heads in 2 key/value groups."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
                         num_labels=num_labels, pad_token_id=0, attn_implementation=attn)
    return _seeded(lambda: Logits(LlamaForSequenceClassification(config), text=True))


def text_input(batch: int = 1, length: int = 6) -> Tensor:
    """Token ids 1.. (no padding token, so sequence classifiers read the last position)."""
    return (torch.arange(batch * length).reshape(batch, length) % 49 + 1).float()


def hf_resnet(attn: str = "eager", num_labels: int = 5) -> Logits:
    """ResNetForImageClassification: two stages of basic blocks, 8 and 16 wide."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=num_labels)
    return _seeded(lambda: Logits(ResNetForImageClassification(config)))


def hf_convnext(attn: str = "eager", num_labels: int = 5) -> Logits:
    """ConvNextForImageClassification: two stages of one block, 8 and 16 wide."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(num_channels=3, patch_size=2, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                            num_labels=num_labels)
    return _seeded(lambda: Logits(ConvNextForImageClassification(config)))
