"""The service's HTTP API on real small searches (digits cnn), through FastAPI's TestClient (acceptance 1, 4, 6).

One service runs per database backend (``--max-concurrent 1``); its searches are real processes. Each
test runs on SQLite (the default) and on a PostgreSQL server of the test session (skipped without
one), but the long cancel-and-resume search, which runs on SQLite only: the same SQL as the shared
search's state changes, at four times its cost.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import optuna
import pytest
from fastapi.testclient import TestClient

from search.service.app import create_app
from search.service.executor import LocalProcessExecutor
from search.service.settings import ServiceConfig
from tests import forkserver
from tests.search.service.helpers import AUTH, SMALL, TOKEN, parse_sse, wait_for

# One service and its search processes for the whole module, on one xdist worker.
pytestmark = pytest.mark.xdist_group("service")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """The service database: SQLite in the state folder, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return None  # the default
    return request.getfixturevalue("postgres").create_database("amc_api")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, amc_cache: Path, db_url: str | None):
    state = tmp_path_factory.mktemp("service")
    config = ServiceConfig(token=TOKEN, state_dir=str(state), db_url=db_url, max_concurrent=1, poll_interval=0.1,
                           max_evaluations=500, allow_factory=("nosuchpkg.*", "amc.*"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMC_CACHE_DIR", str(amc_cache))  # the search processes load the session's cnn
        mp.setenv("OMP_NUM_THREADS", "1")
        # The searches' worker processes are forked from the test worker's fork server (tests/forkserver.py).
        executor = LocalProcessExecutor(config.python, workdir=config.workdir, spawn=forkserver.spawn_worker)
        with TestClient(create_app(config, executor=executor)) as c:
            yield c


def _get(client: TestClient, search_id: str) -> dict:
    response = client.get(f"/v1/searches/{search_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def _history(client: TestClient, search_id: str) -> list[dict[str, str]]:
    response = client.get(f"/v1/searches/{search_id}/artifacts/history.csv", headers=AUTH)
    assert response.status_code == 200
    return list(csv.DictReader(io.StringIO(response.text)))


def test_every_route_but_healthz_needs_the_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    for path in ("/v1/searches", "/v1/searches/0123456789abcdef", "/openapi.json"):
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/searches", json=SMALL).status_code == 401
    assert client.get("/v1/searches", headers=AUTH).status_code == 200


def test_openapi_document_lists_the_routes_and_the_search_options(client: TestClient) -> None:
    doc = client.get("/openapi.json", headers=AUTH).json()
    assert {"/v1/searches", "/v1/searches/{search_id}", "/v1/searches/{search_id}/events",
            "/v1/searches/{search_id}/evaluations", "/v1/searches/{search_id}/artifacts/{name}",
            "/v1/searches/{search_id}/cancel", "/v1/searches/{search_id}/resume", "/healthz"} <= set(doc["paths"])
    settings = doc["components"]["schemas"]["SearchSettings"]["properties"]
    assert "fraction of the base model's resource" in settings["budget"]["description"]  # search.py's help
    assert settings["strategy"]["enum"][:3] == ["ddpg", "td3", "sac"]
    assert (settings["evaluations"]["minimum"], settings["evaluations"]["maximum"]) == (1, 500)  # this service's
    assert settings["warmup"]["minimum"] == 0
    assert {"/v1/searches/{search_id}/summary", "/v1/searches/{search_id}/artifacts"} <= set(doc["paths"])
    assert "out" not in settings and "storage" not in settings
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"budget": 0}, "budget", "must be a number in (0, 1]"),  # the CLI's own message for --budget 0
    ({"budget": "0.3"}, "budget", "valid number"),
    ({"strategy": "foo"}, "strategy", "invalid choice: 'foo'"),
    ({"min_keep": 0.9, "max_keep": 0.5}, "min_keep", "must not exceed --max-keep"),
    ({"evaluations": 501}, "evaluations", "must be in [1, 500] on this service"),  # 0 is refused: not [0, ...]
    ({"evaluations": 0}, "evaluations", "must be an integer >= 1"),
    ({"model": "resnet2000"}, "model", "unknown model 'resnet2000': use one of cnn, convnext"),  # not 201-then-fail
    ({"model": "nosuchpkg.models:make"}, "model", "cannot import module 'nosuchpkg.models'"),
    ({"dataset": "nosuchpkg.data:splits"}, "dataset", "cannot import module 'nosuchpkg.data'"),
    ({"model": "amc.models:nosuch"}, "model", "has no callable 'nosuch'"),
    ({"model": "os:system"}, "model", "runs no package.module:factory unless its operator allows it"),  # issue 35
    ({"model": "hf:/etc"}, "model", "loads no hf: model unless its operator names a models folder"),
    ({"out": "/etc"}, "out", "not settable"),
    ({"nosuch": 1}, "nosuch", "unknown setting"),
    ({"score": "finetune:0"}, "score", "finetune:0"),
    ({"ladder": ["bn", "finetune:100000"]}, "ladder", "at most finetune:10000 on this service"),
    ([1, 2], "body", "dictionary"),
])
def test_bad_settings_are_422_with_the_field_and_the_reason(client: TestClient, body, field: str,
                                                            reason: str) -> None:
    before = len(client.get("/v1/searches", headers=AUTH).json()["searches"])
    response = client.post("/v1/searches", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert reason in response.json()["reason"]
    assert len(client.get("/v1/searches", headers=AUTH).json()["searches"]) == before


def test_bounded_bodies_and_parameters(client: TestClient) -> None:
    huge = {"model": "cnn", "padding": "x" * 70_000}
    assert client.post("/v1/searches", json=huge, headers=AUTH).status_code == 413
    response = client.get("/v1/searches?state=sleeping", headers=AUTH)
    assert response.status_code == 422 and response.json()["field"] == "state"
    assert client.get("/v1/searches/not-an-id", headers=AUTH).status_code == 422
    assert client.get("/v1/searches/0123456789abcdef", headers=AUTH).status_code == 404


@pytest.fixture(scope="module")
def finished(client: TestClient) -> tuple[str, list[dict]]:
    """An Optuna search of 6 evaluations, watched through its event stream from submission to its end."""
    headers = {**AUTH, "Idempotency-Key": "first-search"}
    response = client.post("/v1/searches", json={**SMALL, "strategy": "optuna", "evaluations": 6}, headers=headers)
    assert response.status_code == 201, response.text
    search_id = response.json()["id"]
    retry = client.post("/v1/searches", json={**SMALL, "strategy": "optuna", "evaluations": 6}, headers=headers)
    assert (retry.status_code, retry.json()["id"]) == (200, search_id)
    other = client.post("/v1/searches", json={**SMALL, "strategy": "optuna", "evaluations": 7}, headers=headers)
    assert other.status_code == 409
    stream = client.get(f"/v1/searches/{search_id}/events", headers=AUTH)  # ends with the search
    assert stream.headers["content-type"].startswith("text/event-stream")
    return search_id, parse_sse(stream.text)


@pytest.mark.timeout(120)
def test_a_default_search_counts_its_baselines(client: TestClient) -> None:
    """With the baselines on (the default), a search's candidates are its evaluations plus the two baselines."""
    body = {**SMALL, "evaluations": 3}
    del body["no_baselines"]
    search_id = client.post("/v1/searches", json=body, headers=AUTH).json()["id"]
    events = parse_sse(client.get(f"/v1/searches/{search_id}/events", headers=AUTH).text)
    evaluations = [e["data"] for e in events if e["event"] == "evaluation"]
    assert [e["count"] for e in evaluations] == [1, 2, 3, 4, 5] and {e["total"] for e in evaluations} == {5}
    search = _get(client, search_id)
    assert (search["state"], search["evaluations_done"], search["progress"]) == ("succeeded", 5, 1.0)
    rows = _history(client, search_id)
    assert [r["origin"] for r in rows] == ["baseline:uniform", "baseline:tp-global", "search", "search", "search"]


@pytest.mark.timeout(120)
def test_submit_watch_and_fetch(client: TestClient, finished) -> None:
    search_id, events = finished
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    evaluations = [e["data"] for e in events if e["event"] == "evaluation"]
    assert [e["count"] for e in evaluations] == [1, 2, 3, 4, 5, 6]
    assert all(e["total"] == 6 for e in evaluations)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    search = _get(client, search_id)
    assert (search["state"], search["evaluations_done"], search["progress"], search["attempt"]) == \
        ("succeeded", 6, 1.0, 1)
    rows = _history(client, search_id)
    assert len(rows) == 6
    assert search["best"]["accuracy"] == max(float(r["accuracy"]) for r in rows)
    assert evaluations[-1]["best_accuracy"] == search["best"]["accuracy"]
    # Each event's best is the best up to its own row, never a later row's (issue 32, point 7).
    accuracies = {int(r["index"]): float(r["accuracy"]) for r in rows}
    for event in evaluations:
        assert event["best_index"] <= event["index"], event
        assert event["best_accuracy"] == max(accuracies[i] for i in range(event["index"] + 1)), event
        assert event["best_accuracy"] == accuracies[event["best_index"]], event

    policy = client.get(f"/v1/searches/{search_id}/artifacts/policy.json", headers=AUTH)
    assert policy.headers["content-type"] == "application/json"
    policy = policy.json()
    assert policy["format"].startswith("amc-policy")
    assert policy["meta"]["evaluations"] == 6 and not policy["meta"]["interrupted"]
    assert policy["metrics"]["val_accuracy"] == search["best"]["accuracy"]
    assert list(policy["keep"].values()) == pytest.approx(search["best"]["keep"])
    # The study is in the service database, beside the service's tables.
    study = optuna.load_study(study_name=f"amc-search/{search_id}", storage=client.app.state.config.database_url)
    complete = {t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert {int(r["step"]) for r in rows} <= complete
    report = client.get(f"/v1/searches/{search_id}/artifacts/report.html", headers=AUTH)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")

    page = client.get(f"/v1/searches/{search_id}/evaluations?offset=4", headers=AUTH).json()
    assert [e["index"] for e in page["evaluations"]] == [4, 5] and page["next"] == 6
    assert page["evaluations"][0]["accuracy"] == float(rows[4]["accuracy"])
    # ?after= is offset's former name (a row count); the event stream's ?after= is an event id.
    assert client.get(f"/v1/searches/{search_id}/evaluations?after=4", headers=AUTH).json() == page
    # A finished search's actions answer in plain words.
    conflict = client.post(f"/v1/searches/{search_id}/cancel", headers=AUTH)
    assert conflict.status_code == 409 and f"search {search_id} has succeeded:" in conflict.json()["detail"]
    assert "has succeeded: only interrupted or cancelled" in \
        client.post(f"/v1/searches/{search_id}/resume", headers=AUTH).json()["detail"]

    # Resumable: after the third event only the later ones come back.
    again = parse_sse(client.get(f"/v1/searches/{search_id}/events",
                                 headers={**AUTH, "Last-Event-ID": str(ids[2])}).text)
    assert [e["id"] for e in again] == ids[3:]


def test_only_written_artifacts_are_listed(client: TestClient, finished) -> None:
    """A TPE search writes no pareto.json, a no_export one no pruned.pt2, and a search no pruned.onnx."""
    search_id, _ = finished
    listed = client.get(f"/v1/searches/{search_id}/artifacts", headers=AUTH).json()["artifacts"]
    names = [a["name"] for a in listed]
    assert set(names) == {"policy.json", "history.csv", "report.html", "report.png", "config.json", "run.log",
                          "service.log"}
    for artifact in listed:
        response = client.get(f"/v1/searches/{search_id}/artifacts/{artifact['name']}", headers=AUTH)
        assert response.status_code == 200 and len(response.content) == artifact["bytes"] > 0
        assert response.headers["content-type"].split(";")[0] == artifact["media_type"].split(";")[0]


def test_summary_has_the_reports_facts(client: TestClient, finished) -> None:
    """Base and uniform accuracy, the per-layer widths of the best policy against base and uniform, the time."""
    search_id, _ = finished
    summary = client.get(f"/v1/searches/{search_id}/summary", headers=AUTH).json()
    policy = client.get(f"/v1/searches/{search_id}/artifacts/policy.json", headers=AUTH).json()
    metrics = policy["metrics"]
    search = _get(client, search_id)
    assert summary["best_index"] == search["best"]["index"] == policy["meta"]["best_evaluation"]
    assert (summary["base_val_accuracy"], summary["uniform_val_accuracy"], summary["best_test_accuracy"]) == \
        (metrics["base_val_accuracy"], metrics["uniform_val_accuracy"], metrics["test_accuracy"])
    layers = summary["layers"]
    assert [layer["name"] for layer in layers] == list(policy["keep"])
    assert [layer["best"] for layer in layers] == list(policy["channels"].values())
    assert all(layer["uniform"] <= layer["base"] and layer["best"] <= layer["base"] for layer in layers)
    assert 0 < summary["uniform_cost_ratio"] <= 0.5 + 1e-9  # SMALL's budget
    assert summary["elapsed_s"] > 0 and summary["remaining_s"] is None  # finished: nothing left


@pytest.mark.timeout(120)
def test_a_failed_search_is_not_resumable_and_can_be_deleted(client: TestClient, finished) -> None:
    """A failed search would fail again the same way: 409 on resume, with the reason; delete takes it away."""
    response = client.post("/v1/searches", json={**SMALL, "evaluations": 3, "checkpoint": "/nonexistent/base.pt"},
                           headers=AUTH)
    assert response.status_code == 201, response.text
    search_id = response.json()["id"]
    failed = wait_for(lambda: _get(client, search_id), lambda s: s["state"] == "failed", timeout=90, what="failed")
    resume = client.post(f"/v1/searches/{search_id}/resume", headers=AUTH)
    assert resume.status_code == 409
    assert resume.json()["detail"].startswith(f"search {search_id} has failed ({failed['error']})")
    assert client.delete(f"/v1/searches/{search_id}", headers=AUTH).status_code == 204
    assert client.get(f"/v1/searches/{search_id}", headers=AUTH).status_code == 404


def test_artifact_names_stay_inside_the_run_folder(client: TestClient, finished) -> None:
    search_id, _ = finished
    base = f"/v1/searches/{search_id}/artifacts"
    for name in ("..%2F..%2Fetc%2Fpasswd", "../../etc/passwd", "%2Fetc%2Fpasswd", "..%2Fservice.db",
                 "pruned.pt2",  # --no-export: not written
                 "service-exit.json"):  # in the folder, but not an artifact
        response = client.get(f"{base}/{name}", headers=AUTH)
        assert response.status_code == 404, (name, response.text)
        assert "root:" not in response.text
    assert client.get(f"{base}/config.json", headers=AUTH).json()["strategy"] == "optuna"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cancel_keeps_the_best_and_resume_completes_exactly(client: TestClient, finished) -> None:
    total = 80  # 30-80 ms a digits evaluation (a repeat, ~10 ms): the cancel lands within a few of them
    running = client.post("/v1/searches", json={**SMALL, "evaluations": total}, headers=AUTH).json()
    waiting = client.post("/v1/searches", json={**SMALL, "evaluations": 5}, headers=AUTH).json()
    search_id = running["id"]
    wait_for(lambda: _get(client, search_id), lambda s: s["evaluations_done"] >= 2, timeout=60,
             what="two evaluations")
    # --max-concurrent 1: the second waits in the queue, and a queued search is cancelled at once.
    queued = client.get("/v1/searches?state=queued", headers=AUTH).json()["searches"]
    assert [s["id"] for s in queued] == [waiting["id"]]
    cancelled = client.post(f"/v1/searches/{waiting['id']}/cancel", headers=AUTH).json()
    assert (cancelled["state"], cancelled["attempt"]) == ("cancelled", 0)

    asked = time.monotonic()
    response = client.post(f"/v1/searches/{search_id}/cancel", headers=AUTH)
    assert response.status_code == 202 and response.json()["state"] == "cancelling"
    stopped = wait_for(lambda: _get(client, search_id), lambda s: s["state"] == "cancelled", timeout=10,
                       what="cancelled within 10 s")
    assert time.monotonic() - asked < 10
    done = stopped["evaluations_done"]
    assert 2 <= done < total
    policy = client.get(f"/v1/searches/{search_id}/artifacts/policy.json", headers=AUTH).json()
    assert policy["meta"]["interrupted"] and policy["meta"]["evaluations"] == done
    assert policy["metrics"]["val_accuracy"] == stopped["best"]["accuracy"]
    assert client.post(f"/v1/searches/{search_id}/cancel", headers=AUTH).status_code == 409

    assert client.post(f"/v1/searches/{search_id}/resume", headers=AUTH).json()["state"] == "queued"
    events = parse_sse(client.get(f"/v1/searches/{search_id}/events", headers=AUTH).text)
    final = _get(client, search_id)
    assert (final["state"], final["evaluations_done"], final["attempt"]) == ("succeeded", total, 2)
    rows = _history(client, search_id)
    assert [int(r["index"]) for r in rows] == list(range(total))
    assert sorted(int(r["step"]) for r in rows) == list(range(total))  # no sample drawn twice, none skipped
    counts = [e["data"]["count"] for e in events if e["event"] == "evaluation"]
    assert counts == list(range(1, total + 1))
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert states == ["queued", "running", "cancelling", "cancelled", "queued", "running", "succeeded"]
    assert client.post(f"/v1/searches/{search_id}/resume", headers=AUTH).status_code == 409


def test_delete_only_finished_searches(client: TestClient, finished) -> None:
    search_id, _ = finished
    run_dir = Path(client.app.state.manager.get(search_id).run_dir)
    assert run_dir.is_dir()
    assert client.delete(f"/v1/searches/{search_id}", headers=AUTH).status_code == 204
    assert client.get(f"/v1/searches/{search_id}", headers=AUTH).status_code == 404
    assert client.get(f"/v1/searches/{search_id}/events", headers=AUTH).status_code == 404
    assert not run_dir.exists()
    with pytest.raises(KeyError):  # its Optuna study went with it
        optuna.load_study(study_name=f"amc-search/{search_id}", storage=client.app.state.config.database_url)
    assert client.delete(f"/v1/searches/{search_id}", headers=AUTH).status_code == 404
    # The key of a deleted search is free again.
    fresh = client.post("/v1/searches", json={**SMALL, "evaluations": 200},  # still running when cancelled
                        headers={**AUTH, "Idempotency-Key": "first-search"})
    assert fresh.status_code == 201 and fresh.json()["id"] != search_id
    fresh_id = fresh.json()["id"]
    assert client.delete(f"/v1/searches/{fresh_id}", headers=AUTH).status_code == 409  # queued or running
    assert client.post(f"/v1/searches/{fresh_id}/cancel", headers=AUTH).json()["state"] in ("cancelled", "cancelling")
    wait_for(lambda: _get(client, fresh_id), lambda s: s["state"] == "cancelled", timeout=30, what="cancelled")
    assert client.delete(f"/v1/searches/{fresh_id}", headers=AUTH).status_code == 204
    json.dumps(client.get("/v1/searches", headers=AUTH).json())  # the list stays serialisable


def test_query_numbers_must_be_written_as_whole_numbers(client: TestClient, finished) -> None:
    """Pydantic's lax ints take ``0.0``; the API answers 422 naming the parameter (found by schemathesis)."""
    search_id, _ = finished
    for url, name in ((f"/v1/searches/{search_id}/evaluations?after=0.0", "after"), ("/v1/searches?limit=1.5", "limit"),
                      (f"/v1/searches/{search_id}/evaluations?limit=1e3", "limit")):
        response = client.get(url, headers=AUTH)
        assert response.status_code == 422 and response.json()["field"] == name, (url, response.text)
    assert client.get("/v1/searches?limit=2&offset=0", headers=AUTH).status_code == 200  # (the search may be deleted)
