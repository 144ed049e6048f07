"""AsyncForwarder against a real Redis: the sync API's results and errors on the same
inputs, the spool with Redis stopped, several loops, a fork, and a loop that keeps
ticking while Redis does not answer."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from benchmarks.async_loop_lag import measure
from forwarder import AsyncForwarder, EnqueueError, Forwarder, InvalidEvent
from forwarder.config import Settings
from forwarder.errors import SpoolFull
from forwarder.messages import IDEMPOTENCY_NAMESPACE, is_event_id
from forwarder.redis_server import RedisServer, free_port
from forwarder.spool import drain
from forwarder.store import Store, connect
from tests.conftest import capture_event, user_event, wait_until
from tests.helpers import queued
from tests.test_fastpath import base, field_names, values

T = TypeVar("T")


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path: Path) -> Settings:
    """conftest's settings, with a spool of the test's own and a timeout a loaded
    machine never reaches (a timed-out LPUSH spools the event: not what these test)."""
    return Settings(redis_url=redis_url, namespace=namespace, experience="fifa-cwc-2025",
                    spool_path=str(tmp_path / "spool.db"), enqueue_timeout=5.0)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def test_capture_enqueues_what_the_sync_capture_enqueues(settings, store):
    async def scenario() -> list[str]:
        async with AsyncForwarder(settings=settings) as fwd:
            return [await fwd.capture(capture_event(1)),
                    await fwd.user_analytics(user_event(2)),
                    *await fwd.capture_many([capture_event(3), capture_event(4)]),
                    *await fwd.user_analytics_many([user_event(5)])]

    ids = run(scenario())
    sync = Forwarder(settings=settings)
    sync_ids = [sync.capture(capture_event(1)), sync.user_analytics(user_event(2)),
                *sync.capture_many([capture_event(3), capture_event(4)]),
                *sync.user_analytics_many([user_event(5)])]
    events = queued(store)
    assert [e["id"] for e in events] == ids + sync_ids
    assert all(is_event_id(i) and uuid.UUID(i).version == 4 for i in ids)
    # Byte for byte the same item but for the id and the time.
    strip = lambda e: {k: v for k, v in e.items() if k not in ("id", "first_seen")}  # noqa: E731
    assert [strip(e) for e in events[:5]] == [strip(e) for e in events[5:]]
    assert events[0]["experience"] == "fifa-cwc-2025" and events[1]["kind"] == "user_analytics"


# --- the property: same inputs, same results, same errors ------------------------------
class Pair:
    """A sync and an async forwarder on one namespace, the async one on its own loop."""

    def __init__(self, settings: Settings):
        self.sync = Forwarder(settings=settings)
        self.loop = asyncio.new_event_loop()
        self.async_ = AsyncForwarder(settings=settings)
        self.store = self.sync.store

    def both(self, method: str, *args: Any, **kwargs: Any) -> tuple[Any, Any, list[str]]:
        """Each forwarder's outcome of the same call, and what each put in the queue."""
        sync = _outcome(lambda: getattr(self.sync, method)(*args, **kwargs))
        pushed_sync = self._take()
        async_ = _outcome(lambda: self.loop.run_until_complete(
            getattr(self.async_, method)(*args, **kwargs)))
        return sync, async_, [*pushed_sync, "|", *self._take()]

    def _take(self) -> list[str]:
        with self.store.client.pipeline() as pipe:
            pipe.lrange(self.store.queue_key, 0, -1).delete(self.store.queue_key)
            raw, _ = pipe.execute()
        return [item.decode() for item in reversed(raw)]


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except InvalidEvent as exc:
        return "InvalidEvent", exc.errors
    except ValueError as exc:
        return "ValueError", str(exc)


@pytest.fixture(scope="module")
def pair(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    namespace = f"test-{uuid.uuid4().hex[:10]}"
    spool = tmp_path_factory.mktemp("spool") / "s.db"
    both = Pair(Settings(redis_url=redis_url, namespace=namespace, experience="fifa-cwc-2025",
                         spool_path=str(spool), enqueue_timeout=5.0))
    yield both
    both.loop.run_until_complete(both.async_.aclose())
    both.loop.close()
    Store(connect(redis_url), namespace).wipe()


def _event(kind: str, i: int, changes: dict[str, Any], drops: list[str]) -> dict[str, Any]:
    data = base(kind, i)
    data.update(changes)
    for name in drops:
        data.pop(name, None)
    return data


KINDS = {"capture": "capture", "user_analytics": "user_analytics",
         "capture_many": "capture", "user_analytics_many": "user_analytics"}


def events(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """tests/test_fastpath.py's events: a valid one with fields changed or dropped."""
    return st.builds(_event, st.just(kind), st.integers(0, 7),
                     st.dictionaries(field_names, values, max_size=2),
                     st.lists(field_names, max_size=2))


experiences = st.one_of(st.none(), st.sampled_from(["other-exp", "../admin", "", "a" * 129]))
keys = st.one_of(st.none(), st.text(max_size=12))


def _same(sync: tuple[str, Any], async_: tuple[str, Any], pushed: list[str],
          idempotency_keys: list[str | None]) -> None:
    assert sync[0] == async_[0], (sync, async_)
    if sync[0] != "ok":
        assert sync[1] == async_[1]
        assert pushed == ["|"], "nothing is enqueued when the call raises"
        return
    ids = [sync[1], async_[1]] if isinstance(sync[1], str) else [*sync[1], *async_[1]]
    half = len(ids) // 2
    for mine, theirs, key in zip(ids[:half], ids[half:], idempotency_keys, strict=True):
        assert is_event_id(mine) and is_event_id(theirs)
        if key is None:
            assert mine != theirs and uuid.UUID(theirs).version == 4
        else:
            assert mine == theirs == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key))
    items = [json.loads(p) for p in pushed if p != "|"]
    assert [i["id"] for i in items] == ids, "one item per event, in call order"
    for item in items:
        item.pop("id"), item.pop("first_seen")
    assert items[:half] == items[half:]


@examples(max_examples=150, deadline=None)
@given(data=st.data(), method=st.sampled_from(["capture", "user_analytics"]),
       experience=experiences, key=keys)
def test_capture_matches_the_sync_api(pair: Pair, data, method, experience, key):
    event = data.draw(events(method))
    args = (event, experience) if method == "capture" else (event,)
    sync, async_, pushed = pair.both(method, *args, idempotency_key=key)
    _same(sync, async_, pushed, [key])


@examples(max_examples=100, deadline=None)
@given(data=st.data(), method=st.sampled_from(["capture_many", "user_analytics_many"]),
       experience=experiences, batch_keys=st.none() | st.lists(keys, max_size=5))
def test_capture_many_matches_the_sync_api(pair: Pair, data, method, experience, batch_keys):
    batch = data.draw(st.lists(events(KINDS[method]), max_size=4))
    args = (batch, experience) if method == "capture_many" else (batch,)
    sync, async_, pushed = pair.both(method, *args, idempotency_keys=batch_keys)
    _same(sync, async_, pushed, batch_keys if batch_keys is not None else [None] * len(batch))


def test_idempotency_key_gives_the_sync_api_s_id(settings):
    async def scenario() -> tuple[str, str]:
        async with AsyncForwarder(settings=settings) as fwd:
            return (await fwd.capture(capture_event(1), idempotency_key="order-77"),
                    await fwd.user_analytics(user_event(1), idempotency_key="order-77"))

    assert run(scenario()) == (Forwarder(settings=settings).capture(
        capture_event(2), idempotency_key="order-77"),) * 2


def test_capture_many_is_all_or_nothing(settings, store):
    events = [capture_event(i) for i in range(5)]
    events[1]["email"] = None
    events[3]["type"] = "NOPE"

    async def scenario() -> tuple[InvalidEvent, list[str]]:
        async with AsyncForwarder(settings=settings) as fwd:
            with pytest.raises(InvalidEvent) as info:
                await fwd.capture_many(events)
            assert store.queue_depth() == 0
            return info.value, await fwd.capture_many([capture_event(i) for i in range(300)])

    error, ids = run(scenario())
    assert set(error.errors) == {"1.email", "3.type"}
    assert [e["id"] for e in queued(store)] == ids and len(set(ids)) == 300


def test_capture_requires_an_experience(redis_url, namespace):
    async def scenario() -> InvalidEvent:
        async with AsyncForwarder(settings=Settings(redis_url=redis_url,
                                                    namespace=namespace)) as fwd:
            with pytest.raises(InvalidEvent) as info:
                await fwd.capture(capture_event(1))
            return info.value

    assert list(run(scenario()).errors) == ["experience"]


def test_from_env_reads_the_environment(redis_url, namespace, store):
    env = {"REDIS_URL": redis_url, "FORWARDER_NAMESPACE": namespace,
           "DISTINCT_EXPERIENCE": "env-exp"}

    async def scenario() -> str:
        async with AsyncForwarder.from_env(env) as fwd:
            return await fwd.capture(capture_event(1))

    event_id = run(scenario())
    assert [(e["id"], e["experience"]) for e in queued(store)] == [(event_id, "env-exp")]


# --- Redis down: the spool, the errors -------------------------------------------------
def _down_settings(namespace: str, spool: str, **kw: Any) -> Settings:
    port = free_port()  # nothing listens there
    return Settings(redis_url=f"redis://:s3cr3t-pw@127.0.0.1:{port}/0", namespace=namespace,
                    experience="fifa-cwc-2025", spool_path=spool, **kw)


def test_spool_off_raises_the_sync_api_s_enqueue_error(namespace):
    settings = _down_settings(namespace, "off")

    async def scenario() -> str:
        async with AsyncForwarder(settings=settings) as fwd:
            with pytest.raises(EnqueueError) as info:
                await fwd.capture(capture_event(1))
            return str(info.value)

    mine = run(scenario())
    with pytest.raises(EnqueueError) as info:
        Forwarder(settings=settings).capture(capture_event(1))
    assert "s3cr3t-pw" not in mine and "***" in mine
    # The same error, up to the wording of the connection refusal.
    assert mine.split(". ")[0] == str(info.value).split(". ")[0]


def test_full_spool_raises_spool_full_like_the_sync_api(namespace, tmp_path):
    settings = _down_settings(namespace, str(tmp_path / "s.db"), spool_max_mb=0.25)
    sync = Forwarder(settings=settings)
    with pytest.raises(SpoolFull):
        for i in range(3000):
            sync.capture(capture_event(i))

    async def scenario() -> SpoolFull:
        async with AsyncForwarder(settings=settings) as fwd:
            with pytest.raises(SpoolFull) as info:
                await fwd.capture(capture_event(1))
            return info.value

    error = run(scenario())
    assert isinstance(error, EnqueueError) and "FORWARDER_SPOOL_MAX_MB" in str(error)
    assert "s3cr3t-pw" not in str(error)


def test_spool_takes_captures_while_redis_is_stopped_and_drains_once_back(tmp_path):
    server = RedisServer(workdir=str(tmp_path)).start()
    namespace = "async-spool"
    settings = Settings(redis_url=server.url, namespace=namespace, experience="fifa-cwc-2025",
                        spool_path=str(tmp_path / "s.db"))

    async def scenario() -> tuple[list[str], list[str], RedisServer]:
        nonlocal server
        async with AsyncForwarder(settings=settings) as fwd:
            assert fwd.spool is not None
            await fwd.capture(capture_event(0))
            await asyncio.to_thread(server.stop)
            during = [await fwd.capture(capture_event(i)) for i in range(1, 301)]
            during += await fwd.capture_many([capture_event(i) for i in range(301, 311)])
            status = await asyncio.to_thread(fwd.spool.status, namespace)
            assert (status.messages, status.events) == (310, 310)
            server = await asyncio.to_thread(
                RedisServer(workdir=str(tmp_path), port=server.port).start)
            # After the short back-off, each capture moves a bounded batch, in a thread.
            after: list[str] = []
            deadline = time.monotonic() + 30
            while (await asyncio.to_thread(fwd.spool.has_rows, namespace)
                   and time.monotonic() < deadline):
                after.append(await fwd.capture(capture_event(1000 + len(after))))
                await asyncio.sleep(0.05)
            assert not fwd.spool.has_rows(namespace)
            return during, after, server

    try:
        during, after, server = run(scenario())
        ids = [e["id"] for e in queued(Store(connect(server.url), namespace))]
        assert set(ids) == set(during) | set(after) and len(ids) == len(set(ids))
        assert [i for i in ids if i in set(during)] == during, "oldest first"
    finally:
        server.stop()


# --- several loops, a fork, aclose ---------------------------------------------------
def test_one_instance_serves_several_loops_in_threads(settings, store):
    fwd = AsyncForwarder(settings=settings)
    together = threading.Barrier(4)

    def thread(t: int) -> list[str]:
        async def main() -> list[str]:
            together.wait(10)  # four loops running at once
            ids = list(await asyncio.gather(*(fwd.capture(capture_event(t * 1000 + i))
                                              for i in range(50))))
            ids += await fwd.capture_many([capture_event(t * 1000 + 100 + i) for i in range(20)])
            await fwd.aclose()
            return ids

        return asyncio.run(main())

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(thread, range(4)))
    assert fwd.spool is not None
    drain(fwd.spool, store)  # in case opening 200 connections at once took 5 s
    events = queued(store)
    assert sorted(e["id"] for e in events) == sorted(i for ids in results for i in ids)
    assert len({e["id"] for e in events}) == 4 * 70
    by_id = {e["id"]: e["body"]["eventValue"] for e in events}
    for t, ids in enumerate(results):
        assert sorted(by_id[i] for i in ids) == sorted(
            [f"evt-{t * 1000 + i}" for i in range(50)]
            + [f"evt-{t * 1000 + 100 + i}" for i in range(20)])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_instance_used_before_a_fork_works_in_the_child_and_the_parent(settings, store):
    fwd = AsyncForwarder(settings=settings)
    parent_loop = asyncio.new_event_loop()
    try:
        # The parent's loop stays open with a pooled connection across the fork.
        parent_loop.run_until_complete(fwd.capture(capture_event(0)))
        pid = os.fork()
        if pid == 0:  # the child: like a worker process forked from a preloaded app
            code = 1
            try:
                async def child() -> None:
                    async with fwd:
                        await asyncio.gather(*(fwd.capture(capture_event(i))
                                               for i in range(1, 21)))
                asyncio.run(child())
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        # The child neither used nor closed the parent's connection.
        parent_loop.run_until_complete(fwd.capture(capture_event(21)))
        parent_loop.run_until_complete(fwd.aclose())
    finally:
        parent_loop.close()
    values = [e["body"]["eventValue"] for e in queued(store)]
    assert sorted(values) == sorted(f"evt-{i}" for i in range(22))
    assert values[0] == "evt-0" and values[-1] == "evt-21"


def test_aclose_closes_the_loop_s_connections(tmp_path):
    server = RedisServer(workdir=str(tmp_path)).start()
    try:
        inspector = redis.Redis.from_url(server.url)  # unnamed: not one of ours
        settings = Settings(redis_url=server.url, namespace="aclose", experience="x",
                            spool_path="off")

        def ours() -> int:
            return sum(1 for c in inspector.client_list() if c["name"] == "distinct-forwarder")

        async def scenario() -> tuple[int, int]:
            async with AsyncForwarder(settings=settings) as fwd:
                await asyncio.gather(*(fwd.capture(capture_event(i)) for i in range(5)))
                opened = await asyncio.to_thread(ours)
            return opened, await asyncio.to_thread(ours)

        opened, _ = run(scenario())
        assert opened >= 1
        # Closed on our side when aclose() returns; Redis drops them from its
        # client list once it has read the close (on a loaded machine, later).
        wait_until(lambda: ours() == 0, 5, 0.05, "Redis to see our connections closed")
    finally:
        server.stop()


# --- the event loop keeps ticking while Redis does not answer ------------------------
def test_a_frozen_redis_never_blocks_the_loop_as_the_sync_capture_does():
    """Not a timing claim: the blocking capture() holds the loop for a whole
    FORWARDER_ENQUEUE_TIMEOUT by construction, the await never does; the
    figures are benchmarks/async_loop_lag.py's."""
    timeout = 1.0  # far above any stall a loaded machine could cause
    mine = measure("frozen", "await capture()", 2.5, 40, enqueue_timeout=timeout)
    blocking = measure("frozen", "capture() in async def", 2.5, 40, enqueue_timeout=timeout)
    assert mine.errors == blocking.errors == []
    assert len(mine.latencies) == len(blocking.latencies) == 100
    # The ticker's lag is its sleep's overrun: a 1 s block shows as a little under 1 s.
    assert max(blocking.lags) >= 0.9 * timeout, "the blocking LPUSH held the loop"
    assert max(mine.lags) < timeout, f"a tick waited {max(mine.lags):.3f} s"
    print(f"longest tick: {max(mine.lags) * 1000:.1f} ms with await capture(), "
          f"{max(blocking.lags) * 1000:.1f} ms with capture() in async def")
