"""The models users bring, surveyed: discovery, the exact cost model and the pruner on random-init models.

``python -m search.bench.models_survey [--hf] [--timm] [--policies N] [--budget S] [--only NAME ...]``

For each model (tiny Hugging Face configs built with ``transformers``, timm models by name when ``timm`` imports,
in-project stand-ins for torchvision's ``nn.MultiheadAttention`` ViT): discovery under a time budget, then
``--policies`` random structured policies, each pruned, run forward and counted. A model is

- ``exact``: the FLOPs (``amc.graph.probe.counting_flops``) and parameter counts of the base and of every
  pruned model equal the cost model's, and every pruned model runs;
- ``refused``: one ``UnsupportedModelError`` line (discovery or pruning said why);
- ``inexact``: a cost differs (a bug);
- ``crashed``: any other exception (a traceback for the user: a bug).

Prints one row per model (status, discovery seconds, decisions, head decisions, layers keeping their width,
the share of the FLOPs the decisions cover, the message) and the counts per status.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from amc.cost.analytic import FlopsCost, ParamsCost
from amc.errors import UnsupportedModelError
from amc.graph.budget import Overtime, time_budget
from amc.graph.discover import discover
from amc.graph.probe import counting_flops
from amc.pruning.pruner import prune_model


@dataclass(frozen=True)
class Row:
    name: str
    status: str
    seconds: float
    decisions: int = 0
    heads: int = 0
    skipped: int = 0
    covered: float = 0.0
    message: str = ""


def _hf(config_name: str, model_name: str, text: bool = False, **config) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        from amc.models.from_hf import HFLogits, conv1d_as_linear

        cfg = getattr(transformers, config_name)(num_labels=5, **config)
        return HFLogits(conv1d_as_linear(getattr(transformers, model_name)(cfg)), text=text)  # as hf:PATH loads it
    return build


_TEXT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=32)
HF_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple]] = {
    "hf-vit": (_hf("ViTConfig", "ViTForImageClassification", hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8), (3, 32, 32)),
    "hf-deit": (_hf("DeiTConfig", "DeiTForImageClassification", hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8), (3, 32, 32)),
    "hf-bert": (_hf("BertConfig", "BertForSequenceClassification", True, **_TEXT), (8,)),
    "hf-roberta": (_hf("RobertaConfig", "RobertaForSequenceClassification", True, pad_token_id=0,
                       **{**_TEXT, "max_position_embeddings": 40}), (8,)),
    "hf-distilbert": (_hf("DistilBertConfig", "DistilBertForSequenceClassification", True, vocab_size=50, dim=32,
                          n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=32), (8,)),
    "hf-llama-gqa": (_hf("LlamaConfig", "LlamaForSequenceClassification", True, num_key_value_heads=2, pad_token_id=0,
                         **_TEXT), (8,)),
    "hf-qwen2-gqa": (_hf("Qwen2Config", "Qwen2ForSequenceClassification", True, num_key_value_heads=2,
                         pad_token_id=0, **_TEXT), (8,)),
    "hf-mistral-gqa": (_hf("MistralConfig", "MistralForSequenceClassification", True, num_key_value_heads=1,
                           pad_token_id=0, **_TEXT), (8,)),
    "hf-gpt2": (_hf("GPT2Config", "GPT2ForSequenceClassification", True, vocab_size=50, n_embd=32, n_layer=2,
                    n_head=4, n_positions=32, pad_token_id=0), (8,)),
    "hf-resnet": (_hf("ResNetConfig", "ResNetForImageClassification", embedding_size=16, hidden_sizes=[16, 32],
                      depths=[1, 1], layer_type="bottleneck"), (3, 32, 32)),
    "hf-convnext": (_hf("ConvNextConfig", "ConvNextForImageClassification", num_stages=2, hidden_sizes=[16, 32],
                        depths=[1, 1]), (3, 32, 32)),
    "hf-swin": (_hf("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=2, embed_dim=16,
                    depths=[1, 1], num_heads=[2, 4], window_size=4), (3, 32, 32)),
    "hf-mobilevit": (_hf("MobileViTConfig", "MobileViTForImageClassification", image_size=32,
                         hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64]), (3, 32, 32)),
    "hf-dinov2": (_hf("Dinov2Config", "Dinov2ForImageClassification", hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, image_size=32, patch_size=8), (3, 32, 32)),
}

TIMM_MODELS = ("vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "efficientformer_l1",
               "levit_128s", "edgenext_xx_small", "resnet18", "efficientnet_b0", "mobilenetv3_small_100",
               "convnext_atto", "regnetx_002", "mobilevit_xxs", "ghostnet_100", "poolformer_s12", "pvt_v2_b0",
               "coat_lite_tiny", "maxvit_tiny_tf_224", "tiny_vit_5m_224", "fastvit_t8", "efficientvit_b0")


# torchvision's own classifiers (random init, weights=None): the MHA ViT, Swin's shifted windows, the
# channel shuffle Torch-Pruning cannot map (refused), dense connections.
TORCHVISION_MODELS = ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny",
                      "squeezenet1_1", "densenet121", "shufflenet_v2_x0_5", "vit_b_16", "swin_t")


def _torchvision(name: str) -> tuple[Callable[[], nn.Module], tuple]:
    size = 224 if name in ("vit_b_16", "swin_t") else 64

    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=5)
    return build, (3, size, size)


def _timm(name: str) -> tuple[Callable[[], nn.Module], tuple]:
    size = 224 if any(k in name for k in ("swin", "maxvit", "tiny_vit", "levit", "efficientformer")) else 64

    def build() -> nn.Module:
        import timm

        try:  # ViT-like models take the image size; the others adapt to any
            return timm.create_model(name, pretrained=False, num_classes=5, img_size=size)
        except TypeError:
            return timm.create_model(name, pretrained=False, num_classes=5)
    return build, (3, size, size)


def mha_vit() -> nn.Module:
    """torchvision's ViT encoder block layout (``nn.MultiheadAttention``, ``ln_1``/``ln_2``, an MLP)."""
    class Block(nn.Module):
        def __init__(self, dim: int = 32) -> None:
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.self_attention = nn.MultiheadAttention(dim, 4, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.ln_1(x)
            x = x + self.self_attention(y, y, y, need_weights=False)[0]
            return x + self.mlp(self.ln_2(x))

    class Net(nn.Module):
        def __init__(self, dim: int = 32) -> None:
            super().__init__()
            self.conv_proj = nn.Conv2d(3, dim, 8, stride=8)
            self.blocks = nn.Sequential(Block(dim), Block(dim))
            self.ln = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv_proj(x).flatten(2).transpose(1, 2)
            return self.head(self.ln(self.blocks(x)).mean(1))
    return Net()


def _measured(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    with counting_flops() as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def survey(name: str, build: Callable[[], nn.Module], shape: tuple, *, policies: int, budget: float) -> Row:
    torch.manual_seed(0)
    text = len(shape) == 1
    x = (torch.arange(shape[0]).float()[None] % 49 + 1) if text else torch.randn(1, *shape)
    start = time.monotonic()
    try:
        model = build().eval()
        graph = discover(model, x, time_budget_s=budget)
    except UnsupportedModelError as exc:
        return Row(name, "refused", time.monotonic() - start, message=str(exc))
    except Exception as exc:  # noqa: BLE001 - what the survey counts
        return Row(name, "crashed", time.monotonic() - start, message=f"{type(exc).__name__}: {exc}")
    seconds = time.monotonic() - start
    flops, params = FlopsCost(graph), ParamsCost(graph)
    base = flops.base + graph.other_flops * 0
    row = dict(decisions=len(graph), heads=sum(s.pattern == "head" for s in graph.layers),
               skipped=len(graph.skipped), covered=sum(s.flops for s in graph.layers) / max(1.0, base))
    rng = random.Random(0)
    try:
        with time_budget(budget):
            if (flops.base, params.base) != _measured(model, x):
                return Row(name, "inexact", seconds, **row, message=f"base {(flops.base, params.base)} "
                           f"measured {_measured(model, x)}")
            for _ in range(policies):
                keep = [rng.uniform(0.05, 1.0) for _ in graph.layers]
                pruned = prune_model(model, graph, keep)
                got = _measured(pruned, x)
                if got != (flops.cost(keep), params.cost(keep)):
                    return Row(name, "inexact", seconds, **row,
                               message=f"predicted {(flops.cost(keep), params.cost(keep))} measured {got}")
    except UnsupportedModelError as exc:
        return Row(name, "refused", seconds, **row, message=f"pruning: {exc}")
    except Overtime:
        return Row(name, "crashed", seconds, **row, message=f"pruning took over {budget:g} s")
    except Exception as exc:  # noqa: BLE001
        return Row(name, "crashed", seconds, **row, message=f"pruning: {type(exc).__name__}: {exc}")
    return Row(name, "exact", seconds, **row)


def models(hf: bool, timm: bool, torchvision: bool = False) -> dict[str, tuple[Callable[[], nn.Module], tuple]]:
    found: dict[str, tuple[Callable[[], nn.Module], tuple]] = {"mha-vit (torchvision layout)": (mha_vit, (3, 32, 32))}
    if hf:
        found.update(HF_MODELS)
    if timm:
        found.update({f"timm-{n}": _timm(n) for n in TIMM_MODELS})
    if torchvision:
        found.update({f"torchvision-{n}": _torchvision(n) for n in TORCHVISION_MODELS})
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf", action="store_true", help="Hugging Face models (needs transformers)")
    parser.add_argument("--timm", action="store_true", help="timm models (needs timm)")
    parser.add_argument("--torchvision", action="store_true", help="torchvision models (needs torchvision)")
    parser.add_argument("--policies", type=int, default=3)
    parser.add_argument("--budget", type=float, default=300.0, help="discovery (and pruning) time budget, seconds")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: discovery time then depends little on the machine's load)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    rows = []
    for name, (build, shape) in models(args.hf, args.timm, args.torchvision).items():
        if args.only and not any(o in name for o in args.only):
            continue
        row = survey(name, build, shape, policies=args.policies, budget=args.budget)
        rows.append(row)
        message = " ".join(row.message.split())[:220]
        print(f"{row.name:<34} {row.status:<8} {row.seconds:7.1f}s dec={row.decisions:<3} heads={row.heads:<2} "
              f"kept={row.skipped:<3} cover={row.covered:4.0%} {message}", flush=True)
    print(dict(Counter(r.status for r in rows)))


if __name__ == "__main__":
    main()
