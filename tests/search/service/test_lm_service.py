"""A language model's sparsity search through the service (issue 36, acceptance 1: "one through the service").

The same service as :mod:`tests.search.service.test_api` (a real search process per submission, SQLite), with a
models folder for ``hf:``: the built-in ``tiny-lm`` (2 blocks of width 32, trained 10 steps on a 120 kB slice of
the standard library) and a random-init Llama in the models folder, each searched at 50% average sparsity with 3
random evaluations after the uniform and OWL baselines, exported, and fetched back over HTTP.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from search.lm import ONNX_FILE, PRETRAINED_DIR, STATE_FILE
from search.lm_baselines import OWL, UNIFORM
from search.service.app import create_app
from search.service.executor import LocalProcessExecutor
from search.service.settings import ServiceConfig
from tests import forkserver
from tests.optional import need
from tests.search.service.helpers import AUTH, TOKEN, parse_sse
from tests.search.test_lm_export import save_causal_lm

pytestmark = pytest.mark.xdist_group("service")

EVALUATIONS = 3
DATA = {"seq_len": 32, "calibration": 0.2, "heldout": 0.2, "max_bytes": 120_000, "calibration_windows": 8,
        "heldout_windows": 16}
TINY = {"model": "tiny-lm", "dataset": "code", "budget": 0.5, "strategy": "random", "evaluations": EVALUATIONS,
        "criterion": "wanda", "model_kwargs": json.dumps({"dim": 32, "depth": 2, "heads": 2}),
        "dataset_kwargs": json.dumps({**DATA, "vocab_size": 300,
                                      "train": {"steps": 10, "batch_size": 8, "warmup": 2, "checkpoint_every": 0,
                                                "eval_windows": 4}})}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lm-models")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, models_dir: Path):
    state = tmp_path_factory.mktemp("lm-service")
    config = ServiceConfig(token=TOKEN, state_dir=str(state), max_concurrent=1, poll_interval=0.1,
                           max_evaluations=50, models_dir=str(models_dir))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMC_CACHE_DIR", str(tmp_path_factory.mktemp("lm-service-cache")))  # tokenizer, tokens, tiny-lm
        mp.setenv("OMP_NUM_THREADS", "1")
        executor = LocalProcessExecutor(config.python, workdir=config.workdir, spawn=forkserver.spawn_worker)
        with TestClient(create_app(config, executor=executor)) as c:
            yield c


def run_to_the_end(client: TestClient, body: dict) -> tuple[dict, list[dict]]:
    """Submits ``body``, follows its event stream to the end; the search and its history rows."""
    response = client.post("/v1/searches", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    search_id = response.json()["id"]
    events = parse_sse(client.get(f"/v1/searches/{search_id}/events", headers=AUTH).text)
    search = client.get(f"/v1/searches/{search_id}", headers=AUTH).json()
    assert [e["data"]["state"] for e in events if e["event"] == "state"] == ["queued", "running", "succeeded"], \
        client.get(f"/v1/searches/{search_id}/artifacts/service.log", headers=AUTH).text[-2000:]
    counts = [e["data"]["count"] for e in events if e["event"] == "evaluation"]
    assert counts == list(range(1, 3 + EVALUATIONS)) and search["progress"] == 1.0  # the 2 baselines counted
    history = client.get(f"/v1/searches/{search_id}/artifacts/history.csv", headers=AUTH)
    return search, list(csv.DictReader(io.StringIO(history.text)))


def artifact_names(client: TestClient, search_id: str) -> set[str]:
    return {a["name"] for a in client.get(f"/v1/searches/{search_id}/artifacts", headers=AUTH).json()["artifacts"]}


@pytest.mark.timeout(180)
def test_a_tiny_lm_search_through_the_service_succeeds_with_its_policy_and_export(client: TestClient) -> None:
    search, rows = run_to_the_end(client, TINY)
    assert [r["origin"] for r in rows[:2]] == [UNIFORM, OWL] and len(rows) == 2 + EVALUATIONS
    assert all(float(r["cost_ratio"]) == pytest.approx(0.5, abs=1e-9) for r in rows)
    policy = client.get(f"/v1/searches/{search['id']}/artifacts/policy.json", headers=AUTH).json()
    assert (policy["resource"], policy["granularity"], policy["criterion"]) == ("params", "weight", "wanda")
    assert policy["meta"]["model"] == "tiny-lm" and policy["meta"]["evaluations"] == 2 + EVALUATIONS
    best = max(rows, key=lambda r: float(r["accuracy"]))
    # ppl score: accuracy = 1 / perplexity; the service's best is the history's and the policy's
    assert search["best"]["accuracy"] == pytest.approx(float(best["accuracy"]))
    assert policy["metrics"]["heldout_perplexity"] == pytest.approx(1 / float(best["accuracy"]), rel=1e-6)
    assert policy["metrics"]["heldout_perplexity"] <= policy["metrics"]["uniform_heldout_perplexity"]
    assert list(policy["keep"].values()) == pytest.approx(search["best"]["keep"])
    # the export, in the run folder; ONNX (with the export extra) also over HTTP
    run_dir = Path(client.app.state.config.state_dir) / "runs" / search["id"]
    assert (run_dir / STATE_FILE).is_file()
    names = artifact_names(client, search["id"])
    assert {"policy.json", "history.csv", "config.json", "run.log"} <= names
    need("onnx")  # the export extra: without it no pruned.onnx is written
    ort = need("onnxruntime")
    assert ONNX_FILE in names
    onnx = client.get(f"/v1/searches/{search['id']}/artifacts/{ONNX_FILE}", headers=AUTH)
    assert onnx.status_code == 200
    session = ort.InferenceSession(onnx.content, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input_ids": np.zeros((1, 8), dtype=np.int64)})[0]
    assert logits.shape == (1, 8, 300) and np.isfinite(logits).all()


@pytest.mark.timeout(180)
def test_an_hf_causal_lm_in_the_models_folder_is_searched_and_exported(client: TestClient,
                                                                       models_dir: Path) -> None:
    need("transformers")
    folder = save_causal_lm(models_dir / "llama", "llama")
    body = {"model": f"hf:{folder}", "dataset": "code", "budget": 0.5, "strategy": "random",
            "evaluations": EVALUATIONS, "dataset_kwargs": json.dumps(DATA)}
    search, rows = run_to_the_end(client, body)
    assert [r["origin"] for r in rows[:2]] == [UNIFORM, OWL]
    policy = client.get(f"/v1/searches/{search['id']}/artifacts/policy.json", headers=AUTH).json()
    assert policy["meta"]["model"] == f"hf:{folder}" and math.isfinite(policy["metrics"]["heldout_perplexity"])
    run_dir = Path(client.app.state.config.state_dir) / "runs" / search["id"]
    assert (run_dir / PRETRAINED_DIR / "model.safetensors").is_file()
    # an hf: folder outside the models folder, or without a tokenizer, is refused at submission
    outside = client.post("/v1/searches", json={**body, "model": "hf:/etc"}, headers=AUTH)
    assert outside.status_code == 422 and "not under this service's models folder" in outside.json()["reason"]
    bare = save_causal_lm(models_dir / "bare", "gpt2")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    refused = client.post("/v1/searches", json={**body, "model": f"hf:{bare}"}, headers=AUTH)
    assert refused.status_code == 422 and "holds no tokenizer" in refused.json()["reason"], refused.text
