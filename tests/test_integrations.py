"""The framework examples in docs/examples/, each driven through a real request.

Each app captures into the real Redis under the test's namespace; the test
then reads the queue and finds the event. Also: what Flower shows of a
delivery task (Celery's ``argsrepr``) has ids and types, never an email.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from forwarder import AsyncForwarder, Forwarder
from forwarder.config import Settings
from forwarder.messages import parse_event
from forwarder.store import Store
from tests.conftest import API_KEY, capture_event, user_event

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
EMAIL = "john.doe@example.com"


def load_example(name: str) -> ModuleType:
    """Import docs/examples/<name>.py as the module ``docs_example_<name>``."""
    module_name = f"docs_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def queued(store: Store) -> list[dict[str, Any]]:
    """Every event waiting in the queue, oldest first."""
    raw = store.client.lrange(store.queue_key, 0, -1)
    return [dict(parse_event(item)) for item in reversed(raw)]


@pytest.fixture
def fwd(settings: Settings) -> Forwarder:
    return Forwarder(settings=settings)


@pytest.fixture
def env_forwarder(redis_url: str, namespace: str,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment an example reads in Forwarder.from_env()."""
    for name, value in {"REDIS_URL": redis_url, "FORWARDER_NAMESPACE": namespace,
                        "DISTINCT_EXPERIENCE": "fifa-cwc-2025"}.items():
        monkeypatch.setenv(name, value)
    yield


# --- Flask ---------------------------------------------------------------------------
def test_flask_example_captures_into_redis(fwd: Forwarder, store: Store) -> None:
    app = load_example("flask_app").create_app(fwd)
    client = app.test_client()

    answer = client.post("/photos/evt-42/views", json={"email": EMAIL})
    assert answer.status_code == 202, answer.get_data(as_text=True)
    [event] = queued(store)
    assert event["id"] == answer.get_json()["eventId"]
    assert event["experience"] == "fifa-cwc-2025"
    assert event["body"]["eventValue"] == "evt-42"
    assert event["body"]["email"] == EMAIL

    bad = client.post("/photos/evt-43/views", json={"email": "not-an-email"})
    assert bad.status_code == 400
    assert "email" in bad.get_json()["errors"]
    assert len(queued(store)) == 1, "an invalid event is not enqueued"


def test_flask_example_builds_its_forwarder_from_the_environment(
    env_forwarder: None, store: Store,
) -> None:
    client = load_example("flask_app").create_app().test_client()
    answer = client.post("/photos/evt-7/views", json={"email": EMAIL})
    assert answer.status_code == 202
    assert [e["id"] for e in queued(store)] == [answer.get_json()["eventId"]]


# --- FastAPI and Starlette: async endpoints on AsyncForwarder --------------------------
@pytest.fixture
def async_fwd(settings: Settings) -> AsyncForwarder:
    return AsyncForwarder(settings=settings)


def test_fastapi_example_captures_into_redis(async_fwd: AsyncForwarder, store: Store) -> None:
    from fastapi.testclient import TestClient

    module = load_example("fastapi_app")
    module.app.dependency_overrides[module.get_forwarder] = lambda: async_fwd
    try:
        with TestClient(module.app) as client:
            answer = client.post("/photos/evt-42/views", json={"email": EMAIL})
            assert answer.status_code == 202, answer.text
            bad = client.post("/photos/evt-43/views", json={"email": "not-an-email"})
            assert bad.status_code == 400
            assert "email" in bad.json()["detail"]
            client.portal.call(async_fwd.aclose)  # on the loop the app ran on
    finally:
        module.app.dependency_overrides.clear()
    [event] = queued(store)
    assert event["id"] == answer.json()["eventId"]
    assert (event["body"]["eventValue"], event["body"]["email"]) == ("evt-42", EMAIL)


def test_fastapi_example_builds_its_forwarder_from_the_environment(
    env_forwarder: None, store: Store,
) -> None:
    from fastapi.testclient import TestClient

    module = load_example("fastapi_app")
    with TestClient(module.app) as client:  # the lifespan builds it, and closes it
        answer = client.post("/photos/evt-8/views", json={"email": EMAIL})
        assert isinstance(module.app.state.forwarder, AsyncForwarder)
        assert module.app.state.forwarder.settings.namespace == store.namespace
    assert answer.status_code == 202, answer.text
    assert [e["id"] for e in queued(store)] == [answer.json()["eventId"]]


def test_starlette_example_captures_into_redis(async_fwd: AsyncForwarder, store: Store) -> None:
    from starlette.testclient import TestClient

    with TestClient(load_example("starlette_app").create_app(async_fwd)) as client:
        answer = client.post("/photos/evt-42/views", json={"email": EMAIL})
        assert answer.status_code == 202, answer.text
        bad = client.post("/photos/evt-43/views", json={"email": "not-an-email"})
        assert bad.status_code == 400 and "email" in bad.json()["errors"]
        no_json = client.post("/photos/evt-44/views", content=b"{not json",
                              headers={"Content-Type": "application/json"})
        assert no_json.status_code == 400 and "email" in no_json.json()["errors"]
    [event] = queued(store)
    assert event["id"] == answer.json()["eventId"]
    assert (event["body"]["eventValue"], event["body"]["email"]) == ("evt-42", EMAIL)


def test_starlette_example_builds_its_forwarder_from_the_environment(
    env_forwarder: None, store: Store,
) -> None:
    from starlette.testclient import TestClient

    with TestClient(load_example("starlette_app").create_app()) as client:
        answer = client.post("/photos/evt-9/views", json={"email": EMAIL})
    assert answer.status_code == 202, answer.text
    assert [e["id"] for e in queued(store)] == [answer.json()["eventId"]]


# --- Django --------------------------------------------------------------------------
def test_django_example_sends_on_commit_only(env_forwarder: None, store: Store) -> None:
    module = load_example("django_app")
    module.get_forwarder.cache_clear()
    from django.test import Client

    client = Client()
    try:
        answer = client.post("/photos/evt-42/views", data=json.dumps({"email": EMAIL}),
                             content_type="application/json")
        assert answer.status_code == 202, answer.content
        [event] = queued(store)
        assert (event["body"]["eventValue"], event["body"]["email"]) == ("evt-42", EMAIL)

        # The transaction rolls back: the on_commit callback never runs.
        missing = client.post("/photos/missing-1/views", data=json.dumps({"email": EMAIL}),
                              content_type="application/json")
        assert missing.status_code == 404
        bad = client.post("/photos/evt-44/views", data=json.dumps({"email": "nope"}),
                          content_type="application/json")
        assert bad.status_code == 400
        assert "email" in bad.json()["errors"]
        assert len(queued(store)) == 1
        assert client.get("/photos/evt-45/views").status_code == 405
    finally:
        module.get_forwarder.cache_clear()


def test_django_example_defers_the_send_inside_a_transaction(
    env_forwarder: None, store: Store,
) -> None:
    """Seen from inside the request: nothing is in Redis before the commit."""
    module = load_example("django_app")
    module.get_forwarder.cache_clear()
    from django.db import transaction
    from django.test import RequestFactory

    request = RequestFactory().post("/photos/evt-50/views", data={"email": EMAIL},
                                    content_type="application/json")
    try:
        with transaction.atomic():
            answer = module.photo_viewed(request, photo_id="evt-50")
            assert answer.status_code == 202
            assert queued(store) == [], "sent before the outer transaction committed"
        assert [e["body"]["eventValue"] for e in queued(store)] == ["evt-50"]
    finally:
        module.get_forwarder.cache_clear()


# --- Flower: what a delivery task shows ----------------------------------------------
def test_argsrepr_shows_event_ids_and_types_never_emails_or_keys(
    fwd: Forwarder, store: Store,
) -> None:
    """Flower displays a task's ``argsrepr``: the dispatcher's labels, not the events."""
    from workers.dispatcher import Dispatcher
    from workers.holding import Holding

    capture_id = fwd.capture(capture_event(1))
    user_id = fwd.user_analytics(user_event(2))
    many = fwd.capture_many([capture_event(i) for i in range(10, 15)])
    sent: list[tuple[str, int, str]] = []
    dispatcher = Dispatcher(Holding(store.client, store.namespace, "w"),
                            lambda *message: sent.append(message), capacity=3)
    while store.queue_depth():
        dispatcher.run_once()
    shown = " ".join(argsrepr for _, _, argsrepr in sent)
    assert f"{capture_id}:PHOTO_VIEWED_BY_USER" in shown
    assert f"{user_id}:user_analytics" in shown
    assert f"{many[0]}:PHOTO_VIEWED_BY_USER" in shown
    assert sum(count for _, count, _ in sent) == 7
    for secret in ("fan1@example.com", "fan2@example.com", "+14155552671", "u-2",
                   "evt-1", API_KEY):
        assert secret not in shown, secret
