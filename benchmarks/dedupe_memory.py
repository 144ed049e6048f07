"""Memory the dedupe window costs per million delivered events, against a plain
key-per-id baseline measured on the same Redis in the same run.

    python -m benchmarks.dedupe_memory [--events 200000]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import redis

from forwarder.store import Store, connect, dedupe_member
from workers.gate import BreakerPolicy
from workers.outcomes import Finish, Outcomes


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def measure(redis_url: str, events: int) -> dict[str, float]:
    client = connect(redis_url)
    ns = f"bench-dedupe-{uuid.uuid4().hex[:8]}"
    store = Store(client, ns)
    ids = [str(uuid.uuid4()) for _ in range(events)]
    try:
        before = _used(client)
        with client.pipeline(transaction=False) as pipe:
            for i, event_id in enumerate(ids):
                pipe.set(f"{ns}:baseline:{event_id}", int(time.time()), ex=86400)
                if i % 5000 == 4999:
                    pipe.execute()
            pipe.execute()
        baseline = (_used(client) - before) / events
        store.wipe()
        before = _used(client)
        # Through finish.lua, as workers record deliveries (32 per call).
        outcomes = Outcomes(client, ns, f"{ns}:held:bench", BreakerPolicy(), 86400)
        for start in range(0, events, 32):
            outcomes.store("", [Finish(f"b:{i}", event_id, "delivered", dedupe_member(event_id))
                                for i, event_id in enumerate(ids[start:start + 32])])
        client.delete(*client.keys(f"{ns}:stats:*"))
        ours = (_used(client) - before) / events
    finally:
        store.wipe()
    return {"events": events, "baseline_bytes_per_id": round(baseline, 1),
            "bytes_per_id": round(ours, 1), "mb_per_million": round(ours, 1),
            "ratio_to_baseline": round(ours / baseline, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    for name, value in measure(url, args.events).items():
        print(f"  {name:24} {value}")


if __name__ == "__main__":
    main()
