"""The options of a language model's sparsity search: :class:`~search.options.SearchOptions` to an
:class:`~amc.lm_context.LMContextConfig` (issue 36).

A search is a language model's when ``--dataset code`` (the installed standard library's code corpus) or
``--model`` is a built-in language model (``tiny-lm``). The options then mean:

- ``--model``: ``tiny-lm`` or ``hf:PATH`` (a local causal LM; its folder's tokenizer reads the corpus);
  ``--model-kwargs``: the factory's (or ``from_pretrained``'s) arguments; ``--checkpoint``: a built-in model's
  weights (none: trained here and cached).
- ``--dataset-kwargs``: the token data (:class:`~amc.data.lm_tokens.LMDataConfig` fields: ``seq_len``,
  ``vocab_size``, ``max_bytes``, ...), the evaluation's window counts (``calibration_windows``,
  ``heldout_windows``, ``batch_size``) and the built-in model's training (``train``: an object of
  :class:`~amc.lm_train.LMTrainConfig` fields, e.g. ``{"steps": 200}``); ``--data-dir``: another folder of
  ``.py`` files as the corpus.
- ``--criterion``: ``magnitude``, ``wanda`` (default) or ``sparsegpt``; ``--score``: ``ppl`` (default) or
  ``kl``; ``--per``: one decision per transformer ``block`` or per linear ``layer``.
- The budget is the fraction of the prunable weights kept (``--resource params``); options an image model's
  search alone takes (another ``--resource``, ``--granularity channel``, ``--depth``, ``--epochs``, ``--ladder``,
  ``--select``) are refused in one line naming the fix (``--select`` is off unless given).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amc.errors import ConfigError
from search.values import LM_DATASETS

if TYPE_CHECKING:
    from amc.lm_context import LMContextConfig

# The functions take a search.options.SearchOptions (which imports this module: not imported here).
SearchOptions = Any

_EVAL_KEYS = ("calibration_windows", "heldout_windows", "batch_size")


def is_language_model(options: SearchOptions) -> bool:
    """A per-unit sparsity search on a language model: ``--dataset code`` or a built-in language model."""
    from amc.models.lm import LANGUAGE_MODELS

    return options.dataset in LM_DATASETS or options.model in LANGUAGE_MODELS


def lm_context(options: SearchOptions) -> LMContextConfig | None:
    """The language-model context of ``options``; None for an image (or text classifier) model's search.

    Raises:
        ConfigError: A language model with an option only an image model's search takes, or an unknown
            ``--dataset-kwargs`` key; an image model with a language model's criterion, score or ``--per``.
    """
    if not is_language_model(options):
        check_image_options(options)
        return None
    return lm_context_config(options)


def check_image_options(options: SearchOptions) -> None:
    """Refuses a language model's ``--criterion``, ``--score`` or ``--per`` on an image model's search."""
    from amc.evaluation.lm_evaluator import SCORES
    from amc.sparsity import CRITERIA

    for flag, value, names in (("--criterion", options.criterion, CRITERIA), ("--score", options.score, SCORES)):
        if value in names:
            raise ConfigError(f"{flag} {value} is a language model's: use it with --dataset {LM_DATASETS[0]} and "
                              "--model tiny-lm or hf:PATH, or drop it for this model")
    if "per" in options.model_fields_set:
        raise ConfigError(f"--per {options.per} is a language model's (sparsity per block or layer): use it with "
                          f"--dataset {LM_DATASETS[0]}, or drop it for this model")


def lm_context_config(options: SearchOptions) -> LMContextConfig:
    """The context of a language model's search (:func:`is_language_model`) from ``options``."""
    from amc.data.lm_tokens import LMDataConfig
    from amc.evaluation.lm_evaluator import SCORES, LMEvalConfig
    from amc.lm_context import LMContextConfig
    from amc.lm_train import LMTrainConfig
    from amc.sparsity import CRITERIA

    from amc.models.lm import LANGUAGE_MODELS

    given = options.model_fields_set
    model = options.model if "model" in given else next(iter(LANGUAGE_MODELS))
    if model not in LANGUAGE_MODELS and not model.startswith("hf:"):
        raise ConfigError(f"--model {model} with --dataset {options.dataset}: the code corpus is for language models; "
                          f"use --model {' or '.join(LANGUAGE_MODELS)} or hf:PATH (a local causal LM)")
    if options.dataset not in LM_DATASETS and "dataset" in given:
        raise ConfigError(f"--model {model} with --dataset {options.dataset}: a language model is searched on "
                          f"--dataset {LM_DATASETS[0]} (the standard library's code corpus); use it or leave it out")
    if "resource" in given and options.resource != "params":
        raise ConfigError(f"--resource {options.resource} with a language model: its budget is the fraction of the "
                          "prunable weights kept; use --resource params (or leave --resource out)")
    if "granularity" in given and options.granularity != "weight":
        raise ConfigError(f"--granularity {options.granularity} with a language model: its sparsity is per weight; "
                          "use --granularity weight (or leave it out)")
    refused = [flag for flag, on in (("--depth", options.depth), ("--epochs", "epochs" in given),
                                     ("--ladder", bool(options.ladder))) if on]
    if refused:
        raise ConfigError(f"{', '.join(refused)} with a language model: not taken by a sparsity search (train a "
                          "built-in model with --dataset-kwargs '{\"train\": {\"steps\": N}}'); drop them")
    if "criterion" in given and options.criterion not in CRITERIA:
        raise ConfigError(f"--criterion {options.criterion} with a language model: choose one of "
                          f"{', '.join(CRITERIA)} (which weights of a layer go first)")
    if "score" in given and options.score not in SCORES:
        raise ConfigError(f"--score {options.score} with a language model: choose one of {', '.join(SCORES)} "
                          "(held-out perplexity, or KL to the dense model)")
    kwargs: dict[str, Any] = dict(options.dataset_kwargs or {})
    data_keys = {f.name for f in dataclasses.fields(LMDataConfig)}
    unknown = sorted(set(kwargs) - data_keys - set(_EVAL_KEYS) - {"train"})
    if unknown:
        raise ConfigError(f"--dataset-kwargs {unknown} unknown for a language model: use {sorted(data_keys)}, "
                          f"{list(_EVAL_KEYS)} or train (an object of training settings)")
    train = kwargs.pop("train", {})
    if not isinstance(train, dict):
        raise ConfigError(f"--dataset-kwargs train must be an object such as {{\"steps\": 200}}, got {train!r}")
    evaluation = {k: kwargs.pop(k) for k in _EVAL_KEYS if k in kwargs}
    if model.startswith("hf:"):
        kwargs.setdefault("tokenizer", model.partition(":")[2])  # the model's own tokenizer reads the corpus
    if kwargs.get("tokenizer") is not None:
        check_tokenizer_folder(str(kwargs["tokenizer"]))
    kwargs.setdefault("seed", options.seed)
    try:
        data = LMDataConfig(**kwargs)
        train_config = LMTrainConfig(**train)
    except TypeError as exc:
        raise ConfigError(f"--dataset-kwargs: {exc}") from None
    scored = {"criterion": options.criterion} if "criterion" in given else {}
    if "score" in given:
        scored["score"] = options.score
    return LMContextConfig(model=model, model_kwargs=tuple((options.model_kwargs or {}).items()),
                           checkpoint=options.checkpoint, data=data, corpus_root=options.data_dir,
                           train=train_config, per=options.per, eval=LMEvalConfig(**scored, **evaluation),
                           seed=options.seed, device=options.device)


# A Hugging Face folder's tokenizer is in one of these (fast, byte-level BPE, SentencePiece, WordPiece). Without
# any, AutoTokenizer can still build a tokenizer of the model's type with an empty vocabulary, which reads the
# corpus as no tokens at all: refused here, by name, instead.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")


def check_tokenizer_folder(folder: str) -> None:
    """Refuses a model folder that exists but holds no tokenizer (a missing folder is the loaders' to name).

    Raises:
        ConfigError: ``folder`` has none of :data:`TOKENIZER_FILES`.
    """
    path = Path(folder).expanduser()
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{str(path)!r} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save the "
                          "model's tokenizer there with tokenizer.save_pretrained(PATH), or name a folder that has "
                          "one with --dataset-kwargs '{\"tokenizer\": \"PATH\"}'")


def lm_select(options: SearchOptions) -> str | None:
    """``--select`` of a language model's search: off unless given (then :class:`SearchConfig` refuses it)."""
    from search.values import SELECT_NONE

    return options.select if "select" in options.model_fields_set and options.select != SELECT_NONE else None


__all__ = ["TOKENIZER_FILES", "check_image_options", "check_tokenizer_folder", "is_language_model", "lm_context",
           "lm_context_config", "lm_select"]
