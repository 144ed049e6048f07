"""The operator CLI, driven as a user would (real Redis)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from forwarder.cli import cli
from tests.helpers import add_dead_letter, dead_letter_entry, queued


def _run(redis_url: str, namespace: str, *args: str, env: dict | None = None, input=None):
    runner = CliRunner()
    return runner.invoke(cli, ["--redis-url", redis_url, "--namespace", namespace, *args],
                         env=env, input=input, catch_exceptions=False)


def test_send_from_flags_prints_an_id(redis_url, namespace, store):
    result = _run(redis_url, namespace, "send", "--experience", "fifa-cwc-2025",
                  "--type", "PHOTO_VIEWED_BY_USER", "--event-value", "evt-1",
                  "--email", "john.doe@example.com")
    assert result.exit_code == 0, result.output
    (event,) = queued(store)
    assert result.output.strip() == event["id"]
    assert event["body"]["email"] == "john.doe@example.com"


def test_send_jsonl_from_stdin_and_exit_2_on_invalid(redis_url, namespace, store):
    lines = "\n".join([
        json.dumps({"userId": "u1", "feature": "f", "action": "a", "experienceId": "x",
                    "capturedAt": "2026-01-01T00:00:00Z"}),
        json.dumps({"userId": "u2", "feature": "f", "action": "a", "experienceId": "x",
                    "capturedAt": "2026-01-01T00:00:00", "phone": "555"}),
    ])
    result = _run(redis_url, namespace, "send", "--user", "--file", "-", input=lines)
    assert result.exit_code == 2
    assert "line 2: capturedAt: Has no timezone" in result.output
    assert "line 2: phone: Must be E.164" in result.output
    assert store.queue_depth() == 1  # the valid line went in


def test_send_with_nothing_is_a_usage_error(redis_url, namespace):
    result = _run(redis_url, namespace, "send")
    assert result.exit_code == 2
    assert "nothing to send" in result.output


def test_config_masks_secrets(redis_url, namespace):
    env = {"DISTINCT_API_KEY": "super-secret-api-key", "REDIS_URL": "redis://:pw123@h:6379/0"}
    result = CliRunner().invoke(cli, ["config", "--json"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert "super-secret-api-key" not in result.output and "pw123" not in result.output
    assert shown["redis_url"] == "redis://:***@h:6379/0"


def test_config_lists_every_problem_and_exits_2():
    env = {"FORWARDER_MAX_ATTEMPTS": "many", "FORWARDER_READ_TIMEOUT": "-1",
           "DISTINCT_API_URL": "ftp://x"}
    result = CliRunner().invoke(cli, ["config"], env=env)
    assert result.exit_code == 2
    for var in ("FORWARDER_MAX_ATTEMPTS", "FORWARDER_READ_TIMEOUT", "DISTINCT_API_URL"):
        assert var in result.output


def _dead(store, i: int) -> str:
    return add_dead_letter(store, dead_letter_entry(i))


def test_dlq_list_show_purge(redis_url, namespace, store):
    assert "empty" in _run(redis_url, namespace, "dlq", "list").output
    ids = [_dead(store, i) for i in range(3)]
    table = _run(redis_url, namespace, "dlq", "list").output
    assert all(i in table for i in ids) and "rejected" in table and "3 entries." in table
    shown = _run(redis_url, namespace, "dlq", "show", ids[0]).output
    assert "j***@example.com" in shown and "john.doe@example.com" not in shown
    revealed = _run(redis_url, namespace, "dlq", "show", ids[0], "--reveal").output
    assert "john.doe@example.com" in revealed
    missing = _run(redis_url, namespace, "dlq", "show", "nope")
    assert missing.exit_code == 2
    bulk = _run(redis_url, namespace, "dlq", "purge", "--all")
    assert bulk.exit_code == 2 and "--yes" in bulk.output
    assert store.dlq_depth() == 3
    one = _run(redis_url, namespace, "dlq", "purge", ids[0])
    assert one.exit_code == 0 and "Purged 1" in one.output
    everything = _run(redis_url, namespace, "dlq", "purge", "--all", "--yes")
    assert "Purged 2" in everything.output and store.dlq_depth() == 0
    assert "Nothing to do." in _run(redis_url, namespace, "dlq", "purge", "--all", "--yes").output


def test_dlq_replay_by_id_and_needs_a_selector(redis_url, namespace, store):
    ids = [_dead(store, i) for i in range(2)]
    assert _run(redis_url, namespace, "dlq", "replay").exit_code == 2
    result = _run(redis_url, namespace, "dlq", "replay", ids[1])
    assert result.exit_code == 0 and "Replayed 1" in result.output
    assert store.dlq_ids() == [ids[0]] and store.queue_depth() == 1
    unknown = _run(redis_url, namespace, "dlq", "replay", "0b8e7a52-0c1e-4d4f-9a57-1f7a3c2b9d10")
    assert unknown.exit_code == 1 and "failed 1 (not found)" in unknown.output


def test_status_json(redis_url, namespace, store):
    _dead(store, 1)
    report = json.loads(_run(redis_url, namespace, "status", "--json").output)
    assert report["dlq"] == 1 and report["queue"] == 0 and report["retry"] == 0
    assert report["last_hour"]["dead_lettered"] == 1


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for path in (["send"], ["worker"], ["dlq", "list"], ["dlq", "show"], ["dlq", "replay"],
                 ["dlq", "purge"], ["status"], ["config"], ["sandbox"], ["demo"]):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.output, path
