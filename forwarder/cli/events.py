"""`send`: validate and enqueue events from the shell."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import click

from forwarder.cli.base import Ctx, cli, pass_ctx
from forwarder.errors import InvalidEvent
from forwarder.rawjson import StrictJSONError, loads_strict


# --- send -----------------------------------------------------------------------
def _read_events(json_text: str | None, file: Any) -> Iterator[tuple[str, Any]]:
    if json_text is not None:
        yield "--json", _loads(json_text, "--json")
    if file is not None:
        for number, line in enumerate(file, start=1):
            if line.strip():
                yield f"line {number}", _loads(line, f"line {number}")


def _loads(text: str, where: str) -> Any:
    try:
        return loads_strict(text)
    except StrictJSONError as exc:
        field = "" if exc.field == "_event" else f"{exc.field}: "
        raise click.BadParameter(f"{where}: {field}{exc}") from None


@cli.command()
@click.option("--user", "kind", flag_value="user_analytics",
              help="User Analytics events (default: Capture Analytics).")
@click.option("--capture", "kind", flag_value="capture", default=True, hidden=True)
@click.option("--experience", help="Experience slug for Capture Analytics.")
@click.option("--type", "event_type", help="Capture type, e.g. PHOTO_VIEWED_BY_USER.")
@click.option("--event-value")
@click.option("--email")
@click.option("--session-id")
@click.option("--registration-page-value")
@click.option("--captured-at", help="ISO-8601 with timezone; default now.")
@click.option("--json", "json_text", help="One event as a JSON object.")
@click.option("--file", type=click.File("r"), help="JSONL file of events, '-' for stdin.")
@click.option("--idempotency-key")
@pass_ctx
def send(obj: Ctx, kind: str, experience: str | None, event_type: str | None,
         event_value: str | None, email: str | None, session_id: str | None,
         registration_page_value: str | None, captured_at: str | None,
         json_text: str | None, file: Any, idempotency_key: str | None) -> None:
    """Validate and enqueue events; prints one id per event.

    \b
    Examples:
      distinct-forwarder send --experience fifa-cwc-2025 --type PHOTO_VIEWED_BY_USER \\
          --event-value evt-42 --email john.doe@example.com
      distinct-forwarder send --experience fifa-cwc-2025 --file events.jsonl
    """
    from forwarder.producer import Forwarder
    from forwarder.schemas import format_timestamp

    settings = obj.settings()
    fwd = Forwarder(settings=settings)
    items = list(_read_events(json_text, file))
    if event_type:
        now = format_timestamp(__import__("datetime").datetime.now(
            __import__("datetime").timezone.utc))
        flags = {"type": event_type, "eventValue": event_value, "email": email,
                 "sessionId": session_id, "registrationPageValue": registration_page_value,
                 "recordCapturedAt": captured_at or now}
        items.append(("flags", {k: v for k, v in flags.items() if v is not None}))
    if not items:
        raise click.UsageError("nothing to send: give --type ..., --json or --file")
    failed = False
    for where, event in items:
        try:
            if kind == "user_analytics":
                event_id = fwd.user_analytics(event, idempotency_key=idempotency_key)
            else:
                event_id = fwd.capture(event, experience=experience,
                                       idempotency_key=idempotency_key)
            click.echo(event_id)
        except InvalidEvent as exc:
            failed = True
            for field, messages in sorted(exc.errors.items()):
                click.echo(f"{where}: {field}: {'; '.join(messages)}", err=True)
    if failed:
        sys.exit(2)
