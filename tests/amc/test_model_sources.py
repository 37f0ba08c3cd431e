"""Model sources (amc.models.sources): ``hf:PATH`` and ``timm:NAME`` build the model the data asks for, from
local files only, and say in one line what is wrong or missing (issue 35).

The Hugging Face tests need transformers (installed by ``make install``); the timm tests need timm (marked
``timm``: they run in ``make test-timm``'s environment). Models are tiny random-init configs: nothing is
downloaded.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from amc.errors import ConfigError, ModelError
from amc.models import SOURCES, build_model, model_files
from amc.models.sources import MissingPackageError
from tests.optional import need

DIGITS = {"in_channels": 1, "num_classes": 10, "input_size": (8, 8)}  # what digits asks of a model


def save_vit(path: Path, *, num_labels: int = 10, channels: int = 1) -> nn.Module:
    """A 2-layer ViT for 8x8 images in 4x4 patches, saved with save_pretrained (random init, seeded)."""
    transformers = need("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    image_size=8, patch_size=4, num_channels=channels, num_labels=num_labels)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(path)
    return model


# --- a missing package: one line naming the extra (no package needed) ------------------------------------------

@pytest.mark.parametrize(("name", "package", "extra"), [("timm:resnet18", "timm", "models"),
                                                         ("hf:/some/folder", "transformers", "hf")])
def test_a_missing_package_names_its_extra(monkeypatch: pytest.MonkeyPatch, name: str, package: str,
                                           extra: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else real(n, *a))
    with pytest.raises(MissingPackageError) as caught:
        build_model(name, **DIGITS)
    assert str(caught.value) == f"--model {name} needs {package}: pip install -e '.[{extra}]'"
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ModelError)


def test_sources_are_registered_by_prefix_and_built_ins_keep_their_names() -> None:
    assert {"timm", "hf"} <= set(SOURCES)
    assert model_files("cnn") == [] and model_files("timm:resnet18") == []
    with pytest.raises(ModelError, match=r"'hf:PATH', 'timm:NAME' or 'package.module:factory'"):
        build_model("resnet18", **DIGITS)


# --- hf:PATH -------------------------------------------------------------------------------------------------

def test_hf_image_classifier_loads_its_saved_weights_and_returns_logits(tmp_path: Path) -> None:
    saved = save_vit(tmp_path / "vit")
    model = build_model(f"hf:{tmp_path / 'vit'}", **DIGITS).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        out = model(x)
        expected = saved(pixel_values=x).logits
    assert isinstance(out, torch.Tensor) and out.shape == (3, 10)
    torch.testing.assert_close(out, expected)  # the saved weights, not a new init
    assert model.inner.config._attn_implementation == "eager"  # attention as matmuls, which the cost model counts
    assert next(model.parameters()).dtype == torch.float32


def test_hf_head_of_another_size_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    saved = save_vit(tmp_path / "vit", num_labels=5)
    model = build_model(f"hf:{tmp_path / 'vit'}", **{**DIGITS, "num_classes": 7})
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    assert model.inner.config.num_labels == 7 and len(model.inner.config.id2label) == 7
    torch.testing.assert_close(model.inner.vit.embeddings.patch_embeddings.projection.weight,
                               saved.vit.embeddings.patch_embeddings.projection.weight)


@pytest.mark.parametrize(("ask", "reason"), [
    ({"in_channels": 3}, r"takes 1-channel images, the dataset has 3: save it with num_channels=3"),
    ({"input_size": (16, 16)}, r"takes 8x8 images, the dataset's are 16x16: save it with image_size=16"),
])
def test_hf_image_model_that_does_not_fit_the_data_is_refused(tmp_path: Path, ask: dict, reason: str) -> None:
    save_vit(tmp_path / "vit")
    with pytest.raises(ModelError, match=reason):
        build_model(f"hf:{tmp_path / 'vit'}", **{**DIGITS, **ask})


def test_hf_text_model_builds_for_token_ids_and_is_refused_for_images(tmp_path: Path) -> None:
    transformers = need("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    model = build_model(f"hf:{tmp_path / 'bert'}", in_channels=1, num_classes=3)  # no input_size: token ids
    assert model.text and model(torch.arange(12).reshape(2, 6) % 50).shape == (2, 3)
    with pytest.raises(ModelError, match=r"is a text model \(bert: its forward takes token ids\), and the datasets "
                                         r"here are images"):
        build_model(f"hf:{tmp_path / 'bert'}", **DIGITS)


def test_hf_folder_without_config_is_refused(tmp_path: Path) -> None:
    need("transformers")
    with pytest.raises(ModelError, match=r"is no save_pretrained folder \(it has no config.json\)"):
        build_model(f"hf:{tmp_path}", **DIGITS)


def test_hf_remote_code_is_never_run(tmp_path: Path) -> None:
    """A config that names code of its own (auto_map) is refused, and that code is not imported."""
    need("transformers")
    marker = tmp_path / "ran"
    (tmp_path / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "evil",
                                                      "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    with pytest.raises(ModelError, match=r"transformers cannot read its config.json .*trust_remote_code"):
        build_model(f"hf:{tmp_path}", **DIGITS)
    assert not marker.exists()


def test_hf_files_key_the_cache_of_trained_models(tmp_path: Path) -> None:
    """A model saved anew under the same folder is another model for load_or_train's cache."""
    save_vit(tmp_path / "vit")
    before = model_files(f"hf:{tmp_path / 'vit'}")
    assert {name for name, _, _ in before} >= {"config.json", "model.safetensors"}
    save_vit(tmp_path / "vit", num_labels=4)
    assert model_files(f"hf:{tmp_path / 'vit'}") != before


# --- timm:NAME -----------------------------------------------------------------------------------------------

@pytest.mark.timm
def test_timm_model_takes_the_data_channels_classes_and_size() -> None:
    need("timm")
    torch.manual_seed(0)
    resnet = build_model("timm:test_resnet", **DIGITS).eval()
    assert next(m for m in resnet.modules() if isinstance(m, nn.Conv2d)).in_channels == 1
    vit = build_model("timm:test_vit", **DIGITS, patch_size=4).eval()  # img_size=(8, 8) from the data
    assert tuple(vit.patch_embed.img_size) == (8, 8) and vit.patch_embed.num_patches == 4
    for model in (resnet, vit):
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.timm
def test_timm_is_random_init_and_seeded() -> None:
    need("timm")
    torch.manual_seed(3)
    first = build_model("timm:test_resnet", **DIGITS).state_dict()
    torch.manual_seed(3)
    again = build_model("timm:test_resnet", **DIGITS).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.timm
@pytest.mark.parametrize(("name", "kwargs", "reason"), [
    ("timm:no_such_net", {}, r"timm has no model 'no_such_net' \(--model timm:no_such_net\): list them with"),
    ("timm:test_resnet", {"pretrained": True}, r"nothing is downloaded here; .*--checkpoint PATH"),
    ("timm:test_resnet", {"no_such_arg": 1}, r"timm.create_model\('test_resnet', .*failed \(TypeError: .*no_such_arg"),
    ("timm:test_vit", {"patch_size": 16}, r"timm:test_vit cuts 16x16 patches, larger than the dataset's 8x8 images: "
                                          r"pass --model-kwargs '\{\"patch_size\": 4\}'"),
])
def test_timm_refusals_are_one_line(name: str, kwargs: dict, reason: str) -> None:
    need("timm")
    with pytest.raises(ModelError, match=reason) as caught:
        build_model(name, **DIGITS, **kwargs)
    assert "\n" not in str(caught.value)
