"""A real small text corpus, a tokenizer trained on it and tiny Hugging Face text classifiers, all offline.

The corpus is the first line of the docstring of every public function of three standard-library modules,
labelled by module: it exists on every machine with the same Python, needs no download and is real text.
The tokenizer is a word-level one trained here with ``tokenizers`` and saved as a ``PreTrainedTokenizerFast``
into the model's ``save_pretrained`` folder, as a user's model folder holds its tokenizer. A test helper only.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
from pathlib import Path

import torch

MODULES = ("math", "operator", "statistics")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # [PAD] is id 0: the models' pad_token_id


def corpus() -> list[dict[str, str]]:
    """``{"text": first docstring line, "label": module}`` of each public documented function of :data:`MODULES`."""
    rows = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, member in sorted(inspect.getmembers(module, callable)):
            doc = (member.__doc__ or "").strip()
            if attr.startswith("_") or not doc:
                continue
            rows.append({"text": doc.splitlines()[0], "label": name})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_tokenizer(folder: Path, texts: list[str], *, vocab_size: int = 200):
    """A word-level tokenizer trained on ``texts`` (BERT-style [CLS] text [SEP]), saved into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS)))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")
    fast.save_pretrained(folder)
    return fast


def save_text_model(folder: Path, kind: str, *, vocab_size: int, num_labels: int = 3, positions: int = 64) -> Path:
    """A random-init ``BertForSequenceClassification``, ``LlamaForSequenceClassification`` (grouped-query
    attention: 4 query heads in 2 key/value groups) or ``GPT2ForSequenceClassification``, 2 layers of 32 wide,
    saved into ``folder``."""
    import transformers

    common = {"vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 64, "max_position_embeddings": positions, "num_labels": num_labels,
              "pad_token_id": 0}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if kind == "bert":
            model = transformers.BertForSequenceClassification(transformers.BertConfig(**common))
        elif kind == "llama":
            model = transformers.LlamaForSequenceClassification(
                transformers.LlamaConfig(num_key_value_heads=2, **common))
        elif kind == "gpt2":  # its projections are transformers' Conv1D (weights stored transposed)
            model = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
                vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=positions,
                num_labels=num_labels, pad_token_id=0, bos_token_id=1, eos_token_id=1))
        else:
            raise ValueError(f"unknown text model kind {kind!r}")
    model.save_pretrained(folder)
    return folder


def text_setup(tmp: Path, kind: str = "bert") -> tuple[Path, Path]:
    """``(model folder with its tokenizer, corpus .jsonl)`` in ``tmp``."""
    rows = corpus()
    folder = tmp / kind
    tokenizer = save_tokenizer(folder, [r["text"] for r in rows])
    save_text_model(folder, kind, vocab_size=len(tokenizer))
    return folder, write_jsonl(tmp / "docstrings.jsonl", rows)
