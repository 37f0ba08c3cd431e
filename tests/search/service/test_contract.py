"""Contract (acceptance 6): schemathesis fuzzes every operation of the OpenAPI document (the event stream
excluded) with the bearer token, and the service never answers 5xx or outside its document; every
operation answers 401 without the token or with a wrong one.

The searches the fuzzer submits never run: the service gets an executor that starts nothing (a launched
search stays ``running`` until it is cancelled), so the fuzzer reaches every state change without a
process. Generated ids almost never name a search, so the ids of searches made beforehand, one in
each state, are mixed into the path parameters. Schemathesis' default checks all run, but one (see
:data:`EXCLUDED`); each operation gets ``EXAMPLES`` valid and invalid requests (~10 s in all).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Config, GenerationMode
from schemathesis.checks import positive_data_acceptance

from search.service.app import create_app
from search.service.executor import Exit, Launch
from search.service.settings import ServiceConfig
from tests.search.service.helpers import AUTH, TOKEN, wait_for

pytestmark = [pytest.mark.xdist_group("service-contract"), pytest.mark.timeout(300)]
EVENTS = "/v1/searches/{search_id}/events"  # a stream: it ends only with its search
EXAMPLES = 30  # requests per operation
# The submit body's values go through search.py's own parser and configs: rules across settings
# (min_keep <= max_keep), score and model names, defaults over this service's bounds. The document
# states each value's kind and range, not those rules, so schema-valid settings may still be a 422.
EXCLUDED = {"POST /v1/searches": [positive_data_acceptance]}


class IdleExecutor:
    """Starts nothing: an attempt runs until it is cancelled or killed, then exits as Ctrl-C would (130)."""

    kind = "idle"
    outlives_service = False

    def __init__(self) -> None:
        self._numbers = itertools.count()
        self.stopped: set[int] = set()

    def start(self, launch: Launch) -> dict[str, Any]:
        launch.run_dir.mkdir(parents=True, exist_ok=True)
        return {"kind": self.kind, "n": next(self._numbers)}

    def poll(self, handle: dict[str, Any]) -> Exit | None:
        return Exit(130) if handle["n"] in self.stopped else None

    def cancel(self, handle: dict[str, Any]) -> None:
        self.stopped.add(handle["n"])

    def kill(self, handle: dict[str, Any]) -> None:
        self.stopped.add(handle["n"])

    def logs(self, handle: dict[str, Any]) -> str:
        return ""


def without_lifespan(app):
    """``app`` for schemathesis' ASGI client: requests go through, the lifespan stays the TestClient's."""

    async def asgi(scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    return asgi


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("service-contract")
    config = ServiceConfig(token=TOKEN, state_dir=str(state), max_concurrent=1, poll_interval=0.05,
                           max_evaluations=50)
    with TestClient(create_app(config, executor=IdleExecutor())) as c:
        yield c


@pytest.fixture(scope="module")
def known_ids(client: TestClient) -> list[str]:
    """Searches in each state a client can meet: running, queued, cancelled, and deleted (an id that is gone)."""
    def submit() -> str:
        response = client.post("/v1/searches", json={"strategy": "random", "evaluations": 3}, headers=AUTH)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    running = submit()
    wait_for(lambda: _state(client, running), lambda s: s == "running", timeout=10, what="running")
    cancelled, deleted, queued = submit(), submit(), submit()  # --max-concurrent 1: they wait
    for search_id in (cancelled, deleted):
        assert client.post(f"/v1/searches/{search_id}/cancel", headers=AUTH).json()["state"] == "cancelled"
    assert client.delete(f"/v1/searches/{deleted}", headers=AUTH).status_code == 204
    assert [_state(client, i) for i in (running, cancelled, queued)] == ["running", "cancelled", "queued"]
    return [running, cancelled, deleted, queued]


def _state(client: TestClient, search_id: str) -> str:
    return client.get(f"/v1/searches/{search_id}", headers=AUTH).json()["state"]


@pytest.fixture(scope="module")
def api_schema(client: TestClient):
    """The service's own OpenAPI document, its requests sent in-process to the app."""
    # The token goes with every request (the 401s are checked below); an unknown query parameter is
    # ignored, as HTTP servers do, so it is not generated as a "schema-violating" request.
    config = Config.from_dict({"generation": {"with-security-parameters": False, "allow-extra-parameters": False}})
    return schemathesis.openapi.from_asgi("/openapi.json", without_lifespan(client.app), config=config,
                                          headers=AUTH).exclude(path=EVENTS)


# Settings search.py accepts: random bodies almost never are (a model name, a score...), so without
# these the fuzzer would never get past validation into a submission.
ACCEPTED = st.fixed_dictionaries(
    {"strategy": st.sampled_from(["random", "optuna", "uniform", "ddpg"]), "evaluations": st.integers(1, 50)},
    optional={"budget": st.floats(0.05, 1.0), "seed": st.integers(0, 2**31 - 1), "no_export": st.booleans(),
              "criterion": st.sampled_from(["l1", "l2", "taylor"]), "min_keep": st.floats(0.05, 0.2)})


def _cases(operation, known_ids: list[str]) -> st.SearchStrategy:
    """Valid and invalid requests; on a search's routes, half of them name a search that exists (or existed)."""
    strategies = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategies.append(operation.as_strategy(mode))
        if "{search_id}" in operation.path:
            strategies += [operation.as_strategy(mode, path_parameters={"search_id": i}) for i in known_ids]
    if operation.label == "POST /v1/searches":
        strategies.append(ACCEPTED.flatmap(lambda body: operation.as_strategy(body=body)))
    return st.one_of(strategies)


def _fuzz(operation, known_ids: list[str], statuses: dict[str, set[int]]) -> None:
    """``EXAMPLES`` requests to ``operation``, each answer through schemathesis' checks; raises the first failure."""
    excluded = EXCLUDED.get(operation.label, [])

    @given(case=_cases(operation, known_ids))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))
    def check(case) -> None:
        response = case.call_and_validate(headers=AUTH, excluded_checks=excluded)
        statuses.setdefault(operation.label, set()).add(response.status_code)

    check()


@pytest.mark.timeout(240)
def test_the_service_keeps_its_contract(api_schema, known_ids: list[str]) -> None:
    """No 5xx, and every answer is one the document lists (status, content type, headers, body schema)."""
    failures, labels, statuses = [], [], {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        try:
            _fuzz(operation, known_ids, statuses)
        except Exception as exc:  # noqa: BLE001 (each operation's first failure, all reported together)
            failures.append(f"{operation.label}: {exc}")
    assert "GET /v1/searches/{search_id}/events" not in labels and len(labels) >= 8, labels
    assert not failures, "\n\n".join(failures)
    # The fuzzer got past validation everywhere: each operation had an answer other than 422.
    assert all(codes - {422} for codes in statuses.values()), statuses
    assert {201, 422} <= statuses["POST /v1/searches"], statuses
    assert 204 in statuses["DELETE /v1/searches/{search_id}"], statuses


def test_every_operation_needs_the_token(client: TestClient, known_ids: list[str]) -> None:
    doc = client.get("/openapi.json", headers=AUTH).json()
    operations = [(method, path) for path, item in doc["paths"].items() for method in item if path != "/healthz"]
    assert len(operations) >= 9
    before = client.get("/v1/searches", headers=AUTH).json()
    for method, path in operations:
        url = path.replace("{search_id}", known_ids[0]).replace("{name}", "policy.json")
        for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": TOKEN}):
            response = client.request(method, url, headers=headers, json={} if method == "post" else None)
            assert response.status_code == 401, (method, url, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/searches", headers=AUTH).json() == before  # nothing was submitted, cancelled or deleted


def test_artifact_names_outside_the_list_are_404(client: TestClient) -> None:
    search_id = client.post("/v1/searches", json={"strategy": "random", "evaluations": 3}, headers=AUTH).json()["id"]
    run_dir = Path(client.app.state.manager.get(search_id).run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # queued: nothing made it yet
    (run_dir / "policy.json").write_text("{}")
    base = f"/v1/searches/{search_id}/artifacts"
    assert client.get(f"{base}/policy.json", headers=AUTH).status_code == 200
    for name in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                 "policy.json%00", "..%2Fpolicy.json", "service.db"):
        response = client.get(f"{base}/{name}", headers=AUTH)
        assert response.status_code == 404, (name, response.text)
        assert "root:" not in response.text
