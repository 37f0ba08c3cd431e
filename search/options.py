"""The options of a search: one pydantic model from which every edge that takes them is derived.

:class:`SearchOptions` lists every option of ``scripts/search.py`` with its default, its help text and the
reader that checks its value (:mod:`search.values`). From it come:

- the command line (:func:`search.launch.command_line`: one argument per field, in field order);
- the ``--config`` TOML file (:func:`read_config_file`, then :class:`SearchOptions`), whose keys are the
  long option names;
- the service's JSON body (:func:`search.service.validation.validate_settings`).

Every value is read from its text, as a command line carries it (:func:`as_text`), so the three edges
refuse a bad value with the same reason. :meth:`SearchOptions.to_config` then builds the frozen configs,
whose own checks (the ones across options) apply to every edge alike.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from amc.errors import ConfigError
from amc.evaluation.scores import score_choices
from search import values as v

if TYPE_CHECKING:
    from search.config import SearchConfig

KINDS = ("boolean", "integer", "number", "string", "list")  # the JSON kind of a value


@dataclasses.dataclass(frozen=True)
class Option:
    """How one option is read: the metadata of a :class:`SearchOptions` field.

    Attributes:
        read: Text to checked value (raises :class:`search.values.OptionError`).
        kind: The value's JSON kind, one of :data:`KINDS` (what the service's schema declares).
        names: The choices, for an option that takes one of a few names.
        name, flag, default, help: Filled in by :func:`options` from the field.
    """

    read: v.Reader = v.text
    kind: str = "string"
    names: Callable[[], tuple[str, ...]] | None = None
    name: str = ""
    default: Any = None
    help: str = ""

    @property
    def flag(self) -> str:
        """The command-line spelling (``--min-keep``)."""
        return "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> tuple[str, ...] | None:
        return self.names() if self.names is not None else None


def _one_of(names: tuple[str, ...]) -> str:
    """``a, b or c``: a registry's names in a help text."""
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def _option(default: Any, help: str, read: v.Reader = v.text, kind: str = "string") -> Any:
    info = Field(default, description=help)
    info.metadata.append(Option(read=read, kind=kind))
    return info


def _choice(default: str, help: str, names: Callable[[], tuple[str, ...]]) -> Any:
    info = Field(default, description=help)
    info.metadata.append(Option(read=v.one_of(names), names=names))
    return info


def _flag(help: str) -> Any:
    info = Field(False, description=help)
    info.metadata.append(Option(kind="boolean"))
    return info


# Torch's default (one thread per core) spin-waits when another process holds a core: on the 2-core machine the
# default search took 15.8 s with 2 threads beside one busy process against 10.2 s with 1 (101 s against 23 s on a
# machine already busy), and within 8% of each other alone on an idle machine (BENCHMARKS.md, threads; issue 32).
DEFAULT_THREADS = 1
_budget = v.number_in(0, 1, meaning=" (fraction of the base cost kept)")
_positive = v.int_at_least(1)
_gpu_share = v.number_in(0, 64, low_closed=True, meaning=" (GPUs per worker; fractions share a GPU)")


def _dataset_spec(value: str) -> str:
    """A built-in dataset, ``imagefolder``, ``text:FILE`` (:data:`amc.data.names.PREFIXES`) or
    ``package.module:factory``."""
    from amc.data.names import DATASETS, PREFIXES

    prefix, colon, ref = value.partition(":")
    if colon and prefix in PREFIXES:
        if not ref.strip():
            raise v.OptionError(f"must name a file after {prefix}:, as in {PREFIXES[prefix]}, got {value!r}")
        return value
    try:
        return v.dataset_name(value)
    except v.OptionError:
        raise v.OptionError(f"must be one of {', '.join(DATASETS)}, imagefolder (with --data-dir), "
                            f"{', '.join(PREFIXES.values())} or package.module:factory for your own, got {value!r}"
                            ) from None


def _dataset_kwargs(dataset: str, model: str, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``--dataset-kwargs``; a ``text:`` dataset's tokenizer is the ``hf:`` model's folder unless named."""
    kwargs = dict(kwargs or {})
    if dataset.startswith("text:") and model.startswith("hf:") and "tokenizer" not in kwargs:
        kwargs["tokenizer"] = model.partition(":")[2]
    return kwargs


def _nm_level(value: str) -> str:
    """An N:M level a language model's decision may take (``dense`` or ``N:M``), spelled as the context keeps it."""
    from amc.sparsity.criteria import parse_level

    try:
        return str(parse_level(value))
    except ConfigError:
        raise v.OptionError(f"must be N:M levels such as dense,2:4,1:4 (N of every M weights kept, N <= M), "
                            f"got {value!r}") from None


class SearchOptions(BaseModel):
    """Every option of a search, as ``scripts/search.py`` takes them (field order is ``--help``'s order).

    Values are read from their text (:func:`as_text`) by each field's :class:`Option`; a value that cannot
    be used raises :class:`pydantic.ValidationError` whose first error names the field and the reason
    (:func:`first_error`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget: float = _option(0.3, "fraction of the base model's resource to keep, in (0, 1] (0.3)", _budget, "number")
    resource: str = _choice("flops", "constrained resource (flops)", v.resource_names)
    latency_batch: int = _option(1, "batch size the latency budget is measured at (--resource latency; 1)",
                                 _positive, "integer")
    strategy: str = _choice("optuna", "search strategy (optuna: best in BENCHMARKS.md; ddpg is AMC's agent)",
                            v.strategy_names)
    sampler: str = _choice("tpe", "Optuna sampler (tpe)", v.sampler_names)
    evaluations: int = _option(100, "policies to evaluate (100)", _positive, "integer")
    warmup: int | None = _option(None, "RL warm-up episodes (a quarter of --evaluations, at most 100)", v.integer,
                                 "integer")
    model: str = _option("cnn", "built-in model, timm:NAME, hf:PATH or package.module:factory (cnn)")
    checkpoint: str | None = _option(None, "trained state_dict of --model (default: train and cache one)")
    model_kwargs: dict[str, Any] | None = _option(
        None, "extra keyword arguments of the model factory, a JSON object (none)", v.json_object)
    dataset: str = _option("digits", "digits, fashion-mnist, mnist, cifar10, imagefolder, text:FILE (.jsonl or .csv "
                                     "with text and label, for hf: text models), code (the installed standard "
                                     "library's sources, for language models: tiny-lm or hf:PATH) or "
                                     "package.module:factory (digits)",
                           _dataset_spec)
    data_dir: str | None = _option(
        None, "folder of fashion-mnist / mnist / cifar10 files, of an imagefolder, or a factory's data_dir")
    dataset_kwargs: dict[str, Any] | None = _option(
        None, "imagefolder or text settings or dataset-factory arguments, a JSON object, e.g. '{\"size\": 64}' "
              "('{\"length\": 64}': token ids per text)", v.json_object)
    loader_workers: int = _option(2, "DataLoader processes that read an imagefolder or factory dataset (2)",
                                  v.int_at_least(0), "integer")
    discovery_budget: float = _option(300.0, "seconds layer discovery may take before the model is refused in one "
                                             "line (300)", v.number_in(0, 86400, meaning=" (seconds)"), "number")
    device: str = _option("cpu", "cpu, cuda or cuda:N: base training, evaluation and latency timing (cpu)",
                          v.device_name)
    criterion: str = _choice("l1", "which channels go first (l1); a language model's weights: magnitude, wanda or "
                                   "sparsegpt (wanda)", v.criterion_names)
    score: str = _option("reconstruct", f"candidate score: {_one_of(score_choices())} (reconstruct: "
                                        "the cheapest score that ranks candidates as fine-tuning does; BENCHMARKS.md, "
                                        f"score fidelity); a language model's: {_one_of(v.lm_score_names())} (ppl)",
                          v.score_name)
    ladder: tuple[str, ...] | None = _option(
        None, "costlier scores for the promising candidates, e.g. finetune:50: inside an Optuna study through "
              "--pruner, else re-ranking the best after the search (none)", v.comma_list(v.score_name), "list")
    ladder_top_k: int = _option(8, "candidates the first ladder rung re-scores after a non-Optuna search; each "
                                   "later rung keeps half (8)", _positive, "integer")
    pruner: str = _choice("halving", "Optuna's pruner of a ladder: successive halving or hyperband (halving)",
                          v.pruner_names)
    no_baselines: bool = _flag("do not evaluate the uniform policy and Torch-Pruning's global-pruning widths first "
                               "as candidates of the search")
    warm_start: tuple[str, ...] | None = _option(
        None, "policy.json files or run folders of earlier searches on the same model: their policies, mapped "
              "onto this budget, are evaluated first (none)", v.comma_list(v.text), "list")
    warm_start_top_k: int = _option(3, "distinct policies a --warm-start run folder contributes, its best first (3)",
                                    _positive, "integer")
    select: str = _option(
        "finetune:1", "deploy rung: fine-tune the --select-top-k best candidates and the baselines for EPOCHS epochs "
                      "and return the best after it, finetune:EPOCHS or none (finetune:1)", v.select_recipe)
    select_top_k: int = _option(4, "candidates of the search the deploy rung fine-tunes, besides the baselines (4)",
                                _positive, "integer")
    select_samples: int = _option(10000, "training samples of each deploy-rung fine-tune (10000; all when fewer)",
                                  _positive, "integer")
    select_lr: float = _option(0.01, "learning rate of the deploy rung's fine-tunes (SGD, cosine; 0.01)",
                               v.number_in(0, 10), "number")
    granularity: str = _choice("channel", "structured or unstructured (channel)", v.granularity_names)
    per: str = _choice("block", "a language model's sparsity decisions: one per transformer block or per linear layer "
                                "(block)", v.per_names)
    nm_levels: tuple[str, ...] | None = _option(
        None, "a language model's N:M levels, one per block or layer, e.g. dense,2:4,1:4 (none: unstructured "
              "sparsity)", v.comma_list(_nm_level), "list")
    depth: bool = _flag("depth and width together: each removable block (an identity skip around it: ResNet, "
                        "MobileNetV2, ViT, ConvNeXt blocks) is also a keep/drop decision (any --resource; "
                        "--granularity channel)")
    seed: int = _option(0, "seed of data splits, training and search (0)", v.integer, "integer")
    out: str | None = _option(None, "run folder (runs/<timestamp>)")
    resume: bool = _flag("continue the run in --out")
    min_keep: float = _option(0.2, "lowest keep ratio of a layer (0.2)", v.number, "number")
    max_keep: float = _option(1.0, "highest keep ratio of a layer (1.0)", v.number, "number")
    reward: str = _choice("acc", "episode reward (acc)", v.reward_names)
    round_to: int = _option(1, "channel counts are multiples of this (1)", _positive, "integer")
    val_size: int | None = _option(None, "validation samples carved from train", v.integer, "integer")
    train_limit: int | None = _option(None, "use at most N training samples", _positive, "integer")
    val_limit: int | None = _option(None, "evaluate candidates on the first N validation samples (all)", _positive,
                                    "integer")
    epochs: int = _option(60, "epochs of base-model training when it is not cached (60)", _positive, "integer")
    storage: str | None = _option(None, "Optuna RDB URL (sqlite:///<out>/study.db)")
    threads: int | None = _option(
        DEFAULT_THREADS, "torch threads of this process (1: as the service's searches; 1.5-4x faster than 2 for the "
                         "built-in models beside other work, about even alone; try more only for a large model on an "
                         "otherwise idle machine: BENCHMARKS.md, threads)", _positive, "integer")
    workers: int | None = _option(
        None, "parallel evaluation workers on Ray (1: no Ray; with --ray-address: the cluster's CPUs)", _positive,
        "integer")
    threads_per_worker: int = _option(1, "torch threads of each worker (1)", _positive, "integer")
    gpus_per_worker: float | None = _option(
        None, "GPUs each worker reserves with --device cuda, fractions allowed (an equal share, at most 1)",
        _gpu_share, "number")
    ray_address: str | None = _option(None, "join a Ray cluster: auto or host:port")
    no_export: bool = _flag("do not write pruned.pt2")
    quiet: bool = _flag("no progress bars")

    @field_validator("*", mode="before")
    @classmethod
    def _read(cls, value: Any, info: ValidationInfo) -> Any:
        """Each value is read from its text by its option's reader (a bad one: the reader's reason)."""
        option = _OPTIONS[info.field_name]
        if value is None:
            return None
        if option.kind == "boolean":
            if not isinstance(value, bool):
                raise PydanticCustomError("option", "{reason}", {"reason": f"must be true or false, got {value!r}"})
            return value
        try:
            return option.read(as_text(value))
        except v.OptionError as exc:
            raise PydanticCustomError("option", "{reason}", {"reason": str(exc)}) from None

    def to_config(self) -> SearchConfig:
        """The frozen configs of a run (their checks across options raise :class:`amc.errors.ConfigError`)."""
        from amc.context import ContextConfig
        from amc.cost.latency import LatencyConfig
        from amc.evaluation.evaluator import EvalConfig
        from amc.train import TrainConfig
        from search.config import SearchConfig
        from search.lm_options import lm_context, lm_select

        lm = lm_context(self)  # a language model's sparsity search (search.lm_options), else None
        if self.nm_levels:
            if lm is None:
                raise ConfigError(f"--nm-levels {','.join(self.nm_levels)} is a language model's: use it with "
                                  "--dataset code and --model tiny-lm or hf:PATH, or drop it for this model")
            lm = dataclasses.replace(lm, levels=self.nm_levels)
        context = lm or ContextConfig(
            model=self.model, dataset=self.dataset, data_dir=self.data_dir, checkpoint=self.checkpoint,
            seed=self.seed, resource=self.resource, round_to=self.round_to, val_size=self.val_size,
            train_limit=self.train_limit, model_kwargs=tuple((self.model_kwargs or {}).items()),
            dataset_kwargs=tuple(_dataset_kwargs(self.dataset, self.model, self.dataset_kwargs).items()),
            device=self.device,
            loader_workers=self.loader_workers, discovery_seconds=self.discovery_budget, depth=self.depth,
            eval=EvalConfig(criterion=self.criterion, granularity=self.granularity, seed=self.seed, score=self.score,
                            val_limit=self.val_limit),
            train=TrainConfig(epochs=self.epochs),
            latency=LatencyConfig(batch_size=self.latency_batch, threads=self.threads,
                                  device=self.device if self.resource == "latency" else "cpu"),
        )
        return SearchConfig(
            budget=self.budget, strategy=self.strategy, sampler=self.sampler, evaluations=self.evaluations,
            warmup=self.warmup, min_keep=self.min_keep, max_keep=self.max_keep, reward=self.reward, out=self.out,
            resume=self.resume, storage=self.storage, context=context, progress=not self.quiet,
            export=not self.no_export,
            workers=self.workers if self.workers is not None else (None if self.ray_address else 1),
            threads_per_worker=self.threads_per_worker, ray_address=self.ray_address,
            gpus_per_worker=self.gpus_per_worker, ladder=tuple(self.ladder or ()), ladder_top_k=self.ladder_top_k,
            pruner=self.pruner, baselines=not self.no_baselines, warm_start=tuple(self.warm_start or ()),
            warm_start_top_k=self.warm_start_top_k,
            select=lm_select(self) if lm else (None if self.select == v.SELECT_NONE else self.select),
            select_top_k=self.select_top_k, select_samples=self.select_samples, select_lr=self.select_lr,
        )


def options() -> dict[str, Option]:
    """Every option by name (underscore form), in field order, with its name, default and help filled in."""
    return dict(_OPTIONS)


_OPTIONS: dict[str, Option] = {
    name: dataclasses.replace(next(m for m in info.metadata if isinstance(m, Option)), name=name,
                              default=info.default, help=info.description or "")
    for name, info in SearchOptions.model_fields.items()}


def defaults() -> dict[str, Any]:
    """Every option's default value."""
    return {name: option.default for name, option in _OPTIONS.items()}


def as_text(value: Any) -> str:
    """A value as a command line carries it: a list comma-separated, an object as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def first_error(error: ValidationError, order: list[str] | None = None) -> tuple[str, str]:
    """The option and the reason of a :class:`SearchOptions` error (the first in ``order``, if given)."""
    errors = [e for e in error.errors() if e["loc"]]
    if order:
        errors.sort(key=lambda e: order.index(e["loc"][0]) if e["loc"][0] in order else len(order))
    if not errors:
        return "settings", str(error)
    return str(errors[0]["loc"][0]), errors[0]["msg"]


class ConfigFileError(ConfigError):
    """A ``--config`` file that cannot be used (reported like any bad argument: one line, exit code 2)."""


_JSON_KEYS = ("model_kwargs", "dataset_kwargs")  # TOML tables (or JSON strings)


def read_config_file(path: str) -> dict[str, Any]:
    """The option values of a TOML file whose keys are the long option names (dashes or underscores).

    The values are checked by :class:`SearchOptions`; here only the keys and the TOML kinds.

    Raises:
        ConfigFileError: An unreadable file, invalid TOML, an unknown key or a value of the wrong kind.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"cannot read --config {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"--config {path!r} is not valid TOML: {exc}") from None
    values = {k.replace("-", "_"): value for k, value in data.items()}
    unknown = sorted(set(values) - set(_OPTIONS))
    if unknown:
        raise ConfigFileError(f"unknown key(s) {unknown} in --config {path!r}; use the long option names "
                              f"({', '.join(sorted(_OPTIONS))})")
    for key, value in values.items():
        if _OPTIONS[key].kind == "boolean":
            if not isinstance(value, bool):
                raise ConfigFileError(f"{key} in --config {path!r} must be true or false, got {value!r}")
        elif isinstance(value, (bool, dict, list)) and not (key in _JSON_KEYS and isinstance(value, dict)):
            raise ConfigFileError(f"{key} in --config {path!r} must be a number or a string, got {value!r}")
    return values
