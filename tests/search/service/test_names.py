"""What a request may name (issue 35): built-in models and timm:NAME; hf:PATH only under the operator's models
folder; package.module:factory (models and datasets) only where the operator allows it. Refusals are
SettingsError (HTTP 422 {field, reason}) before anything runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from amc.errors import ConfigError
from search.cli.serve import build_parser
from search.service.names import NamePolicy, SettingsError
from search.service.settings import ServiceConfig
from search.service.validation import validate_settings
from tests.optional import need
from tests.search.helpers import REPO
from tests.search.service.helpers import TOKEN

HAS_TIMM = importlib.util.find_spec("timm") is not None


def refused(values: dict, names: NamePolicy = NamePolicy(), workdir: Path = REPO) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        validate_settings(values, python=sys.executable, workdir=str(workdir), names=names)
    assert "\n" not in caught.value.reason
    return caught.value


def hf_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    return path


@pytest.mark.parametrize(("key", "value"), [("model", "os:system"), ("model", "amc.models:cnn"),
                                            ("dataset", "amc.data.datasets:load_digits")])
def test_factories_are_refused_unless_the_operator_allows_them(key: str, value: str) -> None:
    error = refused({key: value})
    assert error.field == key
    assert error.reason.startswith(f"{value!r}: this service runs no package.module:factory unless its operator "
                                   "allows it (scripts/serve.py --allow-factory 'PATTERN')")


def test_allowed_factories_match_the_operators_globs() -> None:
    names = NamePolicy(allow_factory=("amc.models:*", "amc.data.*"))
    settings = validate_settings({"model": "amc.models:cnn", "dataset": "amc.data.datasets:load_digits"},
                                 workdir=str(REPO), names=names)
    assert settings.options["model"] == "amc.models:cnn"
    assert refused({"model": "amc.models.cnn:cnn"}, names).field == "model"  # amc.models:* does not match it
    assert "cannot import module 'nosuchpkg'" in refused({"model": "nosuchpkg:make"},
                                                         NamePolicy(allow_factory=("nosuchpkg:*",))).reason


def test_hf_needs_a_models_folder(tmp_path: Path) -> None:
    hf_folder(tmp_path / "vit")
    error = refused({"model": f"hf:{tmp_path / 'vit'}"})
    assert (error.field, error.reason) == ("model", f"hf:{tmp_path / 'vit'}: this service loads no hf: model unless "
                                                    "its operator names a models folder (scripts/serve.py --models-dir DIR)")


def test_hf_paths_under_the_models_folder_are_accepted_relative_or_absolute(tmp_path: Path) -> None:
    models = tmp_path / "models"
    hf_folder(models / "vit")
    names = NamePolicy(models_dir=str(models))
    assert validate_settings({"model": f"hf:{models / 'vit'}"}, names=names).options["model"] == f"hf:{models / 'vit'}"
    assert validate_settings({"model": "hf:models/vit"}, workdir=str(tmp_path), names=names).given["model"] == \
        "hf:models/vit"  # relative to the searches' working folder, as the run resolves it


@pytest.mark.parametrize("where", ["outside", "dotdot", "link", "no-config"])
def test_hf_paths_that_leave_the_models_folder_are_refused(tmp_path: Path, where: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    outside = hf_folder(tmp_path / "elsewhere")
    (models / "link").symlink_to(outside)
    (models / "empty").mkdir()
    ref = {"outside": str(outside), "dotdot": f"{models}/../elsewhere", "link": str(models / "link"),
           "no-config": str(models / "empty")}[where]
    error = refused({"model": f"hf:{ref}"}, NamePolicy(models_dir=str(models)))
    assert error.field == "model"
    if where == "no-config":
        assert error.reason == f"hf:{ref} has no config.json: name a folder model.save_pretrained(PATH) wrote under {models}"
    else:
        assert error.reason == (f"hf:{ref} is not under this service's models folder {models}: put the "
                                "save_pretrained folder there and name it by its path")


@pytest.mark.skipif(HAS_TIMM, reason="timm is installed here")
def test_timm_without_timm_where_the_searches_run_is_refused() -> None:
    error = refused({"model": "timm:resnet18"})
    assert error.field == "model"
    assert error.reason == (f"--model timm:resnet18 needs timm: pip install -e '.[models]'; the searches run "
                            f"{sys.executable} in {REPO}: install timm there")


@pytest.mark.timm
def test_timm_names_are_looked_up_where_the_searches_run() -> None:
    need("timm")
    assert validate_settings({"model": "timm:test_resnet"}, workdir=str(REPO)).options["model"] == "timm:test_resnet"
    error = refused({"model": "timm:no_such_net"})
    assert error.reason == "timm has no model 'no_such_net': list them with timm.list_models('*vit*')"


def test_the_operator_names_the_models_folder_and_the_factory_patterns(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--models-dir", str(tmp_path), "--allow-factory", "mypkg.*",
                                      "--allow-factory", "other.models:build"])
    assert (args.models_dir, args.allow_factory) == (str(tmp_path), ["mypkg.*", "other.models:build"])
    config = ServiceConfig(token=TOKEN, models_dir=str(tmp_path), allow_factory=tuple(args.allow_factory))
    assert config.names == NamePolicy(models_dir=str(tmp_path), allow_factory=("mypkg.*", "other.models:build"))
    assert ServiceConfig(token=TOKEN).names == NamePolicy()  # default: built-ins and timm: only
    with pytest.raises(ConfigError, match=r"--models-dir .* is not a folder"):
        ServiceConfig(token=TOKEN, models_dir=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"--allow-factory 'mypkg' matches no package.module:factory name"):
        ServiceConfig(token=TOKEN, allow_factory=("mypkg",))
