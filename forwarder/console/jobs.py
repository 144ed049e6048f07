"""Replays started in the console, run beside the requests, watched from any page.

A job is ``dlq.replay`` (atomic chunks of 100: an entry leaves the DLQ only
once its event is queued) in a thread of the console process, its progress in
a Redis hash (``console:job:{id}``, expiring ``CONSOLE_JOB_TTL_SECONDS`` after
its last update; the ``CONSOLE_JOBS_MAX`` most recent listed). If the console
stops mid-way, the job stops being updated and shows as interrupted: starting
it again resolves its selection again, and what was replayed is no longer
there to be replayed twice, so it resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
import time
from typing import Any

import redis

from forwarder import constants as C
from forwarder import dlq
from forwarder.console.access import Operator
from forwarder.console.audit import AuditLog
from forwarder.store import Store, redis_error_text, text

log = logging.getLogger("distinct_forwarder.console")
#: How many replayed ids a job keeps, to show whether they were delivered since.
TRACKED = 100
RUNNING = ("starting", "running")


class Jobs:
    def __init__(self, store: Store, audit: AuditLog, redis_url: str):
        self.store = store
        self.audit = audit
        self.redis_url = redis_url
        self.prefix = C.key(store.namespace, C.CONSOLE_JOB_PREFIX)
        self.index = C.key(store.namespace, C.CONSOLE_JOBS)

    def start(self, who: Operator, selector: dlq.Selector, selection: str,
              resumes: str | None = None) -> str:
        """Start replaying what ``selector`` selects; returns the job's id."""
        job_id = secrets.token_hex(8)
        now = time.time()
        spec = json.dumps(dataclasses.asdict(selector), separators=(",", ":"))
        self._update(job_id, state="starting", who=who.name, role=who.role,
                     selection=selection, spec=spec, total=0, done=0, replayed=0,
                     skipped=0, missing=0, started=now, resumes=resumes or "")
        with self.store.client.pipeline(transaction=True) as pipe:
            pipe.zadd(self.index, {job_id: now})
            pipe.zremrangebyrank(self.index, 0, -C.CONSOLE_JOBS_MAX - 1)
            pipe.expire(self.index, C.CONSOLE_JOB_TTL_SECONDS)
            pipe.execute()
        threading.Thread(target=self._run, args=(job_id, who, selector, selection),
                         name=f"console-replay-{job_id}", daemon=True).start()
        return job_id

    def _run(self, job_id: str, who: Operator, selector: dlq.Selector, selection: str) -> None:
        done = 0

        def progress(count: int) -> None:
            nonlocal done
            done += count
            self._update(job_id, done=done)

        try:
            ids = selector.resolve(self.store)
            self._update(job_id, state="running", total=len(ids))
            self.audit.record(who, "replay started", selection, len(ids), f"job {job_id}")
            report = dlq.replay(self.store, ids, on_progress=progress)
        except (redis.RedisError, OSError) as exc:
            self._update(job_id, state="failed", error=redis_error_text(exc, self.redis_url))
            self.audit.record(who, "replay failed", selection, done, f"job {job_id}")
            return
        except Exception as exc:  # a bug: shown on the job page, logged in full
            log.exception("console replay job %s failed", job_id)
            self._update(job_id, state="failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return
        counts = {"replayed": len(report.replayed), "skipped": len(report.skipped),
                  "missing": len(report.missing)}
        self._update(job_id, state="done", finished=time.time(),
                     tracked=json.dumps(report.replayed[:TRACKED]), **counts)
        self.audit.record(who, "replay", selection, counts["replayed"],
                          f"skipped {counts['skipped']} (already delivered), "
                          f"not found {counts['missing']}; job {job_id}")

    def _update(self, job_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        key = self.prefix + job_id
        with self.store.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
            pipe.expire(key, C.CONSOLE_JOB_TTL_SECONDS)
            pipe.execute()

    def get(self, job_id: str, now: float | None = None) -> dict[str, Any] | None:
        if not job_id.isalnum() or len(job_id) > 32:
            return None
        raw = {text(k): text(v) for k, v in
               self.store.client.hgetall(self.prefix + job_id).items()}
        if not raw:
            return None
        job: dict[str, Any] = {"id": job_id, **raw}
        for name in ("total", "done", "replayed", "skipped", "missing"):
            job[name] = int(float(raw.get(name) or 0))
        for name in ("started", "updated", "finished"):
            job[name] = float(raw[name]) if raw.get(name) else None
        job["tracked"] = json.loads(raw.get("tracked") or "[]")
        stale = (time.time() if now is None else now) - (job["updated"] or 0)
        if job.get("state") in RUNNING and stale > C.CONSOLE_JOB_STALE_SECONDS:
            job["state"] = "interrupted"
        job["final"] = job.get("state") not in RUNNING
        return job

    def selector(self, job: dict[str, Any]) -> dlq.Selector:
        """The selection a job replayed, to start it again."""
        spec = json.loads(job.get("spec") or "{}")
        names = {f.name for f in dataclasses.fields(dlq.Selector)}
        return dlq.Selector(**{k: v for k, v in spec.items() if k in names})

    def recent(self, count: int = 5) -> list[dict[str, Any]]:
        ids = [text(i) for i in self.store.client.zrevrange(self.index, 0, count - 1)]
        return [job for job in (self.get(i) for i in ids) if job is not None]

    def delivered(self, job: dict[str, Any]) -> int:
        """How many of the job's tracked ids Distinct has accepted since."""
        return sum(1 for event_id in job["tracked"] if self.store.is_delivered(event_id))
