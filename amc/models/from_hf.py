"""``--model hf:PATH``: a Hugging Face ``transformers`` model from a local ``save_pretrained`` folder.

Loaded with ``local_files_only=True`` and never ``trust_remote_code`` (a config that needs remote code is
refused), in float32, with ``attn_implementation="eager"`` (attention written as matmuls, which the cost
model counts; ``--model-kwargs '{"attn_implementation": "sdpa"}'`` to keep PyTorch's fused kernel).
``--model-kwargs`` go to ``from_pretrained`` (config overrides among them).

- An image classifier (``*ForImageClassification``: ViT, DeiT, ResNet, ConvNeXt, ...), or an image encoder
  saved without its head, is loaded as ``AutoModelForImageClassification`` and takes the dataset's images:
  its ``num_channels`` (and ``image_size``, for models with position embeddings) must be the data's.
- A text model (``*ForSequenceClassification``: BERT, Llama, ..., or their encoders) is loaded as
  ``AutoModelForSequenceClassification``; its forward takes token ids ``(B, T)``: a text dataset's
  (``--dataset text:FILE``, :mod:`amc.data.text`, tokenized with the tokenizer saved in the same folder),
  whose samples are ``(T,)`` (``input_size`` ``()``); an image dataset is refused in one line.
  :func:`amc.models.build_model` without ``input_size`` builds either kind.

A saved head of another size than the dataset's classes is replaced by a new one (logged); the base model is
then trained (or ``--checkpoint`` loaded) as for any other model. The evaluator sees the logits:
:class:`HFLogits` wraps the model so that ``forward(x)`` returns the ``logits`` tensor.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from amc.data.streaming import one_line
from amc.errors import ModelError
from amc.models.sources import ModelSource, ModelSpec, register_source

log = logging.getLogger(__name__)


class HFLogits(nn.Module):
    """``inner(pixel_values=x).logits`` (image models) or ``inner(input_ids=x, attention_mask=...).logits`` (text).

    Text models take token ids as a float tensor ``(B, T)`` (the text dataset's, :mod:`amc.data.text`): the
    pruner, latency timing and export feed float tensors, read here as ids clamped into the vocabulary. The
    attention mask is derived from the ids (``ids != pad_token_id``), so the model keeps a single input and
    padded positions are ignored; a model without ``pad_token_id`` attends to every position.
    """

    def __init__(self, inner: nn.Module, text: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.text = text
        # A decoder (GPT-2, Llama, ...) builds a key/value cache by default: a classifier needs none, and its
        # concatenations confuse Torch-Pruning's channel mapping.
        self._no_cache = {"use_cache": False} if "use_cache" in inspect.signature(inner.forward).parameters else {}

    def forward(self, x: Tensor) -> Tensor:
        if not self.text:
            return self.inner(pixel_values=x).logits
        config = self.inner.config
        ids = x.long().clamp(0, config.vocab_size - 1)  # (B, T)
        pad = getattr(config, "pad_token_id", None)
        mask = None if pad is None else (ids != pad).long()
        return self.inner(input_ids=ids, attention_mask=mask, **self._no_cache).logits


def conv1d_as_linear(model: nn.Module) -> nn.Module:
    """``transformers``' ``Conv1D`` (GPT-2's projections: ``x @ W + b`` with ``W`` of shape ``(in, out)``) replaced
    in place by the equivalent ``nn.Linear`` (``W`` transposed), which Torch-Pruning, the pruner and the cost
    model know; the outputs are the same. A model saved back with ``save_pretrained`` would hold the transposed
    weights, so pruned models are exported as programs (``torch.export``, ONNX), not as Hugging Face folders."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers without it: nothing to replace
        return model
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            n_in, n_out = module.weight.shape
            linear = nn.Linear(n_in, n_out, bias=module.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            model.set_submodule(name, linear)
    return model


class HFSource(ModelSource):
    """``hf:PATH``: ``AutoModelFor{Image,Sequence}Classification.from_pretrained(PATH, local_files_only=True)``."""

    prefix = "hf"
    package = "transformers"
    extra = "hf"  # not "models": timm's torchvision must match torch (a mismatched one breaks transformers too)
    usage = "'hf:PATH'"

    def build(self, ref: str, spec: ModelSpec, kwargs: Mapping[str, Any]) -> nn.Module:
        transformers = self.require(ref)
        path = Path(ref).expanduser()
        if not (path / "config.json").is_file():
            raise ModelError(f"--model hf:{ref}: {str(path)!r} is no save_pretrained folder (it has no config.json); "
                             "save the model with model.save_pretrained(PATH) and pass --model hf:PATH")
        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 (a config transformers cannot read: one line, with the fix)
            raise ModelError(f"--model hf:{ref}: transformers cannot read its config.json ({one_line(exc)}); "
                             "models that need trust_remote_code are not loaded") from None
        token_ids = spec.input_size is not None and len(spec.input_size) != 2  # (T,) samples: a text dataset
        if type(config) in transformers.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
            auto, text = transformers.AutoModelForImageClassification, False
            if token_ids:
                raise ModelError(f"--model hf:{ref} is an image model ({config.model_type}), and the dataset gives "
                                 "token ids: use a text classifier (*ForSequenceClassification) or an image dataset")
            _check_images(ref, config, spec)
        elif type(config) in transformers.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
            auto, text = transformers.AutoModelForSequenceClassification, True
            if spec.input_size is not None and not token_ids:
                raise ModelError(f"--model hf:{ref} is a text model ({config.model_type}: its forward takes token "
                                 "ids), and the datasets here are images: pass your text as --dataset text:FILE (a "
                                 ".jsonl or .csv file with text and label columns)")
        else:
            raise ModelError(f"--model hf:{ref} is a {config.model_type!r} model, for which transformers has no "
                             "image or sequence classifier: save a *ForImageClassification or "
                             "*ForSequenceClassification model")
        options: dict[str, Any] = {"attn_implementation": "eager", "dtype": torch.float32, **kwargs}
        if config.num_labels != spec.num_classes:
            log.warning("hf:%s has %d labels, the data %d classes: its classifier head is new (random init)",
                        ref, config.num_labels, spec.num_classes)
            labels = {i: str(i) for i in range(spec.num_classes)}
            options.update(num_labels=spec.num_classes, id2label=labels, label2id={v: k for k, v in labels.items()},
                           ignore_mismatched_sizes=True)
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: ours say what runs
        try:
            model = auto.from_pretrained(path, local_files_only=True, trust_remote_code=False, **options)
        except Exception as exc:  # noqa: BLE001 (missing or unreadable weights, bad kwargs: one line, with the fix)
            raise ModelError(f"--model hf:{ref}: {auto.__name__}.from_pretrained failed ({one_line(exc)}); check "
                             "the folder (config.json and model.safetensors) and --model-kwargs") from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        return HFLogits(conv1d_as_linear(model), text=text)

    def files(self, ref: str) -> list[tuple[str, int, int]]:
        path = Path(ref).expanduser()
        if not path.is_dir():
            return []
        return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file()]


def _check_images(ref: str, config: Any, spec: ModelSpec) -> None:
    """The data's channels (and size, for models with position embeddings) are the model's."""
    channels = getattr(config, "num_channels", None)
    if channels is not None and channels != spec.in_channels:
        raise ModelError(f"--model hf:{ref} takes {channels}-channel images, the dataset has {spec.in_channels}: "
                         f"save it with num_channels={spec.in_channels} or use a {channels}-channel dataset")
    size = getattr(config, "image_size", None)
    if spec.input_size is None or size is None or not _has_position_embeddings(config):
        return
    size = (size, size) if isinstance(size, int) else tuple(size)
    if size != tuple(spec.input_size):
        raise ModelError(f"--model hf:{ref} takes {size[0]}x{size[1]} images, the dataset's are "
                         f"{spec.input_size[0]}x{spec.input_size[1]}: save it with image_size={spec.input_size[0]}")


def _has_position_embeddings(config: Any) -> bool:
    """The image model's forward interpolates position embeddings only when asked (ViT-like models)."""
    import transformers

    model_class = transformers.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)]
    return "interpolate_pos_encoding" in inspect.signature(model_class.forward).parameters


register_source(HFSource())

__all__ = ["HFLogits", "HFSource"]
