"""Shared fixtures: the digits splits, one trained cnn per session, and small built-in models."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from amc.data.datasets import DataSplits, load_dataset
from amc.models import build_model
from amc.train import TrainResult, load_or_train

# Intra-op threads spin-wait for each other: on this 2-core machine, with other jobs running, the default
# (2 threads) made one epoch of the digits cnn 20x slower (16.6 s vs 0.8 s with 1 thread). One thread
# costs ~1.4x when the machine is idle and keeps timings (and the 60 s training bound) meaningful.
torch.set_num_threads(1)

# name -> (input shape (C, H, W), extra factory kwargs): small enough for a 2-core CPU.
SMALL_MODELS: dict[str, tuple[tuple[int, int, int], dict]] = {
    "cnn": ((1, 8, 8), {}),
    "resnet20": ((1, 16, 16), {}),
    "resnet56": ((3, 8, 8), {}),
    "mobilenetv2": ((3, 16, 16), {"width_mult": 0.35}),
}


def build_small_model(name: str, *, seed: int = 0, batch: int = 2) -> tuple[nn.Module, Tensor]:
    """A seeded built-in model (eval mode) and a random input batch ``(batch, C, H, W)`` for it."""
    shape, kwargs = SMALL_MODELS[name]
    with torch.random.fork_rng():  # leave the global RNG as the test found it
        torch.manual_seed(seed)
        model = build_model(name, in_channels=shape[0], num_classes=10, **kwargs).eval()
        example = torch.randn(batch, *shape)
    return model, example


@pytest.fixture(scope="session")
def small_model() -> Callable[..., tuple[nn.Module, Tensor]]:
    """``small_model(name)`` -> (model, example input) for each name in :data:`SMALL_MODELS`."""
    return build_small_model


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    return load_dataset("digits")


# The xdist controller starts the session's cnn training in a process of its own at once, so it runs while
# the workers start (they collect for ~10 s) and run tests that do not need it; it holds the cache's lock,
# and this marker says it is coming (removed once the lock is held).
PRETRAIN_MARKER = "amc-cache-pretraining"


def _shared_root(factory: pytest.TempPathFactory) -> Path:
    """The session's folder: under xdist the workers' own folders (pytest-N/popen-gwK) are below it."""
    root = factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def train_shared_cnn(root: str | Path) -> tuple[nn.Module, TrainResult]:
    """The default cnn trained on digits into ``root/amc-cache``, once for everyone who shares ``root``.

    The first caller trains (under a file lock) and records that call's result; the others load the
    checkpoint and get the same first-call result.
    """
    import dataclasses
    import json

    from filelock import FileLock

    root = Path(root)
    cache, record = root / "amc-cache", root / "amc-cache-first-call.json"
    with FileLock(str(root / "amc-cache.lock")):
        (root / PRETRAIN_MARKER).unlink(missing_ok=True)
        digits = load_dataset("digits")
        if record.exists():
            model, _ = load_or_train("cnn", digits, cache_dir=cache, progress=False)
            return model, TrainResult(**json.loads(record.read_text()))
        model, result = load_or_train("cnn", digits, cache_dir=cache, progress=False)
        record.write_text(json.dumps(dataclasses.asdict(result)))
        return model, result


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has set up the session's folder
def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None) \
            or config.option.collectonly:
        return
    if any(not Path(arg.split("::")[0]).is_dir() for arg in config.args):
        return  # chosen test files: the first test that needs the cnn trains it, if any does
    root = config._tmp_path_factory.getbasetemp()
    (root / PRETRAIN_MARKER).touch()
    code = "import sys; from tests.conftest import train_shared_cnn; train_shared_cnn(sys.argv[1])"
    config.stash[_PRETRAIN] = subprocess.Popen(
        [sys.executable, "-c", code, str(root)], cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, stdin=subprocess.DEVNULL)
    if os.environ.get("AMC_TEST_FORKSERVER") != "0":  # one fork server for both workers (they inherit its path)
        from tests import forkserver

        config.stash[_FORKSERVER] = forkserver.start_shared()


def pytest_unconfigure(config: pytest.Config) -> None:
    proc = config.stash.get(_PRETRAIN, None)
    if proc is not None:  # a short run that never needed the cnn: it need not finish
        proc.kill()
        proc.wait()
    server = config.stash.get(_FORKSERVER, None)
    if server is not None:
        server.close()


_PRETRAIN = pytest.StashKey[subprocess.Popen]()
_FORKSERVER = pytest.StashKey[object]()


@pytest.fixture(scope="session")
def trained_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, TrainResult]:
    """The default cnn trained on digits with the default config, into a fresh cache dir of the session.

    Its result is the first (uncached) call, so tests can check training time and accuracy on it. Under
    xdist the workers share it (:func:`train_shared_cnn`); the controller has started its training already.
    """
    import time

    root = _shared_root(tmp_path_factory)
    deadline = time.monotonic() + 60
    while (root / PRETRAIN_MARKER).exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # until the controller's training process holds the lock
    return train_shared_cnn(root)


@pytest.fixture(scope="session")
def amc_cache(trained_cnn) -> Path:
    """The session cache holding the default cnn trained on digits (for tests that run whole searches).

    It is ``trained_cnn``'s folder: the default cnn is trained once per session, whoever asks first.
    """
    return Path(trained_cnn[1].checkpoint).parent


@pytest.fixture(scope="session", autouse=True)
def sb3_log_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """SB3's ``learn()`` without a logger of ours makes an ``SB3-<time>`` folder in the system's temp dir per
    call (the tests that drive SB3 directly): ``$SB3_LOGDIR`` puts them in the session's folder instead."""
    os.environ.setdefault("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3-logs")))


@pytest.fixture
def cache_env(amc_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything that falls back to ``$AMC_CACHE_DIR`` finds the session cache, never ``~/.cache``.

    Opt-in (``pytestmark = pytest.mark.usefixtures("cache_env")``) so other modules keep their own caches.
    """
    monkeypatch.setenv("AMC_CACHE_DIR", str(amc_cache))


# The longest xdist groups, longest first (measured: ray ~170 s, service ~55 s, ... lottery ~20 s).
LONG_GROUPS = ("ray", "service", "runner", "ladder", "web", "lottery", "search-cli", "latency", "rl_resume")
# Many short, independent tests that need no cnn (1-5 s each): the end of the run, where they even out the
# workers' last minutes.
FILLER_MODULES = ("tests/envs/test_projection.py",)


def _schedule_key(items: list[pytest.Item]):
    """The order ``make test`` sends work in (``--no-loadscope-reorder``: xdist keeps it, unit by unit).

    1. Ungrouped tests that need no cnn, while the controller's process trains it (pytest_configure).
    2. The groups that need it, longest first: a long group started last would end the run alone.
    3. The ungrouped tests that need it.
    4. The filler modules.
    Within each part the tests marked slow go first.
    """
    needs: dict[str, bool] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        needs[module] = needs.get(module, False) or not {"trained_cnn", "amc_cache"}.isdisjoint(item.fixturenames)
    sizes: dict[str, int] = {}
    for item in items:
        for group in _groups(item):
            sizes[group] = sizes.get(group, 0) + 1

    def key(item: pytest.Item) -> tuple:
        module = item.nodeid.split("::")[0]
        groups = _groups(item)
        group = groups[0] if groups else ""
        if module in FILLER_MODULES and not group:
            part = 3
        elif group:
            part = 1 if needs[module] or group in LONG_GROUPS else 0
        else:
            part = 2 if needs[module] else 0
        rank = (LONG_GROUPS.index(group), 0) if group in LONG_GROUPS else (len(LONG_GROUPS), -sizes.get(group, 0))
        return part, rank, group, item.get_closest_marker("slow") is None

    return key


def _groups(item: pytest.Item) -> list[str]:
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return sorted(names)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--dist loadgroup`` (``make test``) on pytest 9: send each ``xdist_group`` to one worker.

    pytest-xdist 3.8 marks a grouped test by appending ``@<group>`` to ``item._nodeid``, which pytest 9
    no longer reads (the id lives in ``item._id``), so every group was silently spread over the workers:
    module fixtures were built on both, and the Ray tests could overlap. This does what xdist means to,
    through pytest 9's id, and checks that it took.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers collect; the controller sends work in their order
        items.sort(key=_schedule_key(items))
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import coerce_node_id

    for item in items:
        names = _groups(item)
        suffix = "@" + "_".join(names)
        if names and not item.nodeid.endswith(suffix):
            item._id = coerce_node_id(item.nodeid + suffix)
            if not item.nodeid.endswith(suffix):
                raise RuntimeError(f"cannot group {item.nodeid} for --dist loadgroup: pytest's node ids changed")
