"""A finished language-model search exports its sparse model (issue 36): the run folder's files load back with
the logits of the pruned model in memory, each layer's zeros as the policy decided (counted from the exported
weights), and the held-out perplexity that ``policy.json`` reports.

Searches of 3 random evaluations (after the uniform and OWL baselines) at 50% average sparsity on: the built-in
``tiny-lm`` (2 blocks of width 32, trained 10 steps: ``pruned.pt``, ``tokenizer.json``, ``pruned.onnx``), and a
random-init GPT-2 and Llama (grouped-query attention) saved with ``save_pretrained`` with a byte-level BPE trained
here (``--model hf:PATH``: ``pruned-hf/``, ``pruned.onnx``). Nothing is downloaded.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import pytest
import torch

from amc.data.lm_tokens import LMDataConfig, load_lm_data
from amc.evaluation.lm_evaluator import LMEvalConfig
from amc.evaluation.lm_scores import next_token_nll
from amc.lm_context import LMContextConfig, build_lm_context
from amc.lm_train import LMTrainConfig
from amc.models.lm import build_lm
from amc.pruning.policy import Policy
from amc.sparsity import zeros_per_layer
from amc.train import load_checkpoint
from search.config import SearchConfig
from search.lm import ONNX_FILE, PRETRAINED_DIR, STATE_FILE, TOKENIZER_FILE
from search.runner import run_search
from tests.optional import need

BUDGET = 0.5
TINY_KWARGS = {"dim": 32, "depth": 2, "heads": 2}
SEQ_LEN = 32


def data_config(**kwargs) -> LMDataConfig:
    return LMDataConfig(seq_len=SEQ_LEN, calibration=0.2, heldout=0.2, max_bytes=120_000, **kwargs)


EVAL = LMEvalConfig(criterion="wanda", calibration_windows=8, heldout_windows=16)


def save_causal_lm(folder: Path, arch: str, *, vocab_size: int = 300) -> Path:
    """A random-init GPT-2 or Llama (grouped-query attention) and a byte-level BPE trained on a few standard-library
    files, saved as a user's model folder is (``save_pretrained`` of both); nothing downloaded."""
    need("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:30]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([f.read_text(errors="replace") for f in files],
                            trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab = tok.get_vocab_size()
    ids = {"bos_token_id": 0, "eos_token_id": 0}  # <|endoftext|>, the documents' separator
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if arch == "gpt2":
            model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64, **ids))
        else:
            model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                                 max_position_embeddings=64, **ids))
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


def search(ctx, out: Path, *, export: bool = True):
    config = SearchConfig(budget=BUDGET, strategy="random", evaluations=3, out=str(out), progress=False,
                          export=export, report=False, seed=0, context=ctx.config)
    return run_search(config, context=ctx)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


def check_export(ctx, result, back) -> None:
    """``back`` (the exported model, loaded) against the pruned model in memory and the policy."""
    keep = list(result.best.keep)
    pruned = ctx.evaluator.sparse_model(keep)
    ids = ctx.evaluator.heldout[:4]
    torch.testing.assert_close(logits(back, ids), logits(pruned, ids), atol=1e-5, rtol=0)
    # each layer's zeros, counted from the exported weights, are the policy's: per layer as decided, and per
    # unit its fraction of the weights (to one weight per layer: exact counts are whole weights)
    zeros = zeros_per_layer(back, ctx.layout)
    assert zeros == ctx.graph.removed(keep) and sum(zeros.values()) == round((1 - BUDGET) * ctx.layout.total)
    policy = Policy.load(result.out / "policy.json")
    numel = {x.name: x.numel for x in ctx.layout.layers}
    for unit, kept in zip(ctx.layout.units, policy.ratios(ctx.graph)):
        total = sum(numel[m] for m in unit.members)
        assert sum(zeros[m] for m in unit.members) == pytest.approx((1 - kept) * total, abs=len(unit.members))
    # the exported model's held-out perplexity is the search's figure
    nll = next_token_nll(back, ctx.evaluator.heldout, batch_size=ctx.config.eval.batch_size)
    assert math.exp(nll) == pytest.approx(policy.metrics["heldout_perplexity"], rel=1e-5)
    if (result.out / ONNX_FILE).exists():
        from amc.sparsity.export import onnx_max_error

        need("onnxruntime")
        other = ctx.evaluator.heldout[4:7, :SEQ_LEN - 5]  # another batch and length (dynamic axes)
        assert onnx_max_error(result.out / ONNX_FILE, pruned, other) < 1e-4


def test_a_built_in_lm_run_exports_weights_tokenizer_and_onnx(tmp_path_factory, tmp_path: Path) -> None:
    cache = tmp_path_factory.mktemp("lm-export-cache")
    config = LMContextConfig(model="tiny-lm", model_kwargs=tuple(TINY_KWARGS.items()),
                             data=data_config(vocab_size=300), cache_dir=str(cache), eval=EVAL,
                             train=LMTrainConfig(steps=10, batch_size=8, warmup=2, checkpoint_every=0, eval_windows=4))
    ctx = build_lm_context(config, data=load_lm_data(config.data, cache_dir=cache), progress=False)
    result = search(ctx, tmp_path / "run")
    onnx = [ONNX_FILE] if (result.out / ONNX_FILE).exists() else []
    assert [p.name for p in result.exported] == [STATE_FILE, *onnx] and "pruned.pt" in result.summary()[2]
    # --checkpoint's reader loads the weights into the same built-in model
    back = build_lm("tiny-lm", vocab_size=ctx.data.vocab_size, context=SEQ_LEN, **TINY_KWARGS).eval()
    load_checkpoint(back, result.out / STATE_FILE)
    check_export(ctx, result, back)
    from tokenizers import Tokenizer

    text = "def f(x):\n    return x + 1\n"
    saved = Tokenizer.from_file(str(result.out / TOKENIZER_FILE))
    assert saved.encode(text).ids == ctx.data.tokenizer.encode([text])[0]
    # --no-export: the search's files only
    quiet = search(ctx, tmp_path / "no-export", export=False)
    assert quiet.exported == () and sorted(p.name for p in quiet.out.iterdir()) == [
        "config.json", "history.csv", "policy.json", "run.log"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_an_hf_lm_run_exports_a_folder_transformers_loads(arch: str, tmp_path: Path) -> None:
    folder = save_causal_lm(tmp_path / arch, arch)
    config = LMContextConfig(model=f"hf:{folder}", data=data_config(tokenizer=str(folder)), eval=EVAL,
                             cache_dir=str(tmp_path / "cache"))
    ctx = build_lm_context(config, progress=False)
    result = search(ctx, tmp_path / "run")
    onnx = [ONNX_FILE] if (result.out / ONNX_FILE).exists() else []
    assert [p.name for p in result.exported] == [PRETRAINED_DIR, *onnx]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = result.out / PRETRAINED_DIR
    plain = AutoModelForCausalLM.from_pretrained(exported, local_files_only=True, attn_implementation="eager")
    assert type(plain).__name__ == type(ctx.model.inner).__name__
    back = build_lm(f"hf:{exported}")  # what --model hf:RUN/pruned-hf loads: the layers have the search's names
    with torch.no_grad():
        ids = ctx.evaluator.heldout[:2]
        torch.testing.assert_close(plain.eval()(input_ids=ids).logits, back(ids), atol=1e-6, rtol=0)
    check_export(ctx, result, back)
    text = "import os\nprint(os.getcwd())\n"
    source = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert AutoTokenizer.from_pretrained(exported, local_files_only=True)(text).input_ids == source(text).input_ids
