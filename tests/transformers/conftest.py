"""Tiny randomly initialised Hugging Face models built offline from configs (no download)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

KINDS = ("bert", "distilbert", "vit", "gpt2", "llama", "whisper_encoder")


def tiny_model(kind: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A two-layer model of the family and one batch of inputs for it (seeded)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    model: Any
    if kind == "bert":
        cfg = transformers.BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64,
        )
        model, inputs = transformers.BertModel(cfg), {"input_ids": ids, "attention_mask": mask}
    elif kind == "distilbert":
        cfg = transformers.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
        )
        model, inputs = transformers.DistilBertModel(cfg), {"input_ids": ids, "attention_mask": mask}
    elif kind == "vit":
        cfg = transformers.ViTConfig(
            image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64,
        )
        model, inputs = transformers.ViTModel(cfg), {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    elif kind == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2
        )
        model, inputs = transformers.GPT2Model(cfg), {"input_ids": ids}
    elif kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
        )
        model, inputs = transformers.LlamaModel(cfg), {"input_ids": ids}
    elif kind == "whisper_encoder":
        cfg = transformers.WhisperConfig(
            vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, d_model=32,
            encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16,
        )
        model, inputs = transformers.WhisperModel(cfg).get_encoder(), {"input_features": torch.randn(2, 8, 32, generator=g)}
    else:
        raise KeyError(kind)
    return model.eval(), inputs


def hidden(output: Any) -> torch.Tensor:
    """``last_hidden_state`` read by name, as a user's eval callback would."""
    return output.last_hidden_state  # type: ignore[no-any-return]
