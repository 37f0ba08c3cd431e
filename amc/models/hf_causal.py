"""Causal language models from a local Hugging Face folder (``save_pretrained``): Llama, GPT-2, Mistral, ...

Loaded as ``AutoModelForCausalLM`` with ``local_files_only=True`` (nothing is downloaded), never
``trust_remote_code`` (a config that needs remote code is refused), in float32, with
``attn_implementation="eager"`` (attention as matmuls, as the built-in ``tiny-lm`` writes it). Extra keyword
arguments go to ``from_pretrained`` and override these.

:class:`CausalLMLogits` wraps the model so that ``forward(ids (B, T)) -> logits (B, T, V)``, the contract of
:mod:`amc.evaluation.lm_scores` and of ``tiny-lm``; the loaded model stays in ``.inner`` unchanged (its
modules, names and ``save_pretrained``). GPT-2's projections are ``transformers``' ``Conv1D`` (weight
``(in, out)``, the transpose of ``nn.Linear``'s); they are left as they are, so a model saved back loads in
``transformers``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from amc.errors import ModelError
from amc.models.sources import MissingPackageError

log = logging.getLogger(__name__)


class CausalLMLogits(nn.Module):
    """``inner(input_ids=ids, use_cache=False).logits``: next-token logits ``(B, T, V)`` of ids ``(B, T)``.

    Windows of the token data have no padding, so no attention mask is passed. Float ids (the project's
    example inputs) are read as ids clamped into the vocabulary.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def config(self) -> Any:
        return self.inner.config

    def forward(self, ids: Tensor) -> Tensor:
        if ids.is_floating_point():
            ids = ids.long().clamp(0, self.inner.config.vocab_size - 1)
        return self.inner(input_ids=ids, use_cache=False).logits

    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """The inner model's ``save_pretrained`` (a folder ``transformers`` loads back)."""
        self.inner.save_pretrained(path, **kwargs)


def load_causal_lm(path: str | os.PathLike, **kwargs: Any) -> CausalLMLogits:
    """The causal LM saved in ``path``, wrapped (:class:`CausalLMLogits`), in eval mode on the CPU.

    Args:
        path: A ``save_pretrained`` folder (``config.json`` and the weights).
        **kwargs: Passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation="sdpa"``).

    Raises:
        MissingPackageError: transformers is not installed (names the extra).
        ModelError: No such folder, a config transformers cannot read or that needs remote code, a model
            type without a causal-LM head, or weights that do not load.
    """
    if importlib.util.find_spec("transformers") is None:
        raise MissingPackageError(f"the causal LM in {str(path)!r} needs transformers: pip install -e '.[hf]'")
    import torch
    import transformers

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelError(f"{str(folder)!r} is no save_pretrained folder (it has no config.json); save the model "
                         "with model.save_pretrained(PATH) and pass that folder")
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 (unreadable config or remote code: one line with the fix)
        raise ModelError(f"transformers cannot read {str(folder / 'config.json')!r} ({_one_line(exc)}); models that "
                         "need trust_remote_code are not loaded") from None
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelError(f"{str(folder)!r} holds a {config.model_type!r} model, for which transformers has no causal "
                         "language model (AutoModelForCausalLM); save a *ForCausalLM model (Llama, GPT-2, ...)")
    options: dict[str, Any] = {"attn_implementation": "eager", "dtype": torch.float32, **kwargs}
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                                  trust_remote_code=False, **options)
    except Exception as exc:  # noqa: BLE001 (missing weights, bad kwargs: one line with the fix)
        raise ModelError(f"AutoModelForCausalLM.from_pretrained({str(folder)!r}) failed ({_one_line(exc)}); check "
                         "the folder (config.json and model.safetensors) and the keyword arguments") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    log.info("loaded %s causal LM from %s (%d parameters)", config.model_type, folder,
             sum(p.numel() for p in model.parameters()))
    return CausalLMLogits(model).eval()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["CausalLMLogits", "load_causal_lm"]
