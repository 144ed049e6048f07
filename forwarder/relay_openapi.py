"""The relay's OpenAPI 3.1 document, served at ``GET /openapi.json``.

Built from the same constants as the body schemas (event types, length
limits, the slug rule), so the document and the checks cannot drift apart;
schemathesis runs against it in the tests.
"""

from __future__ import annotations

from typing import Any

from forwarder import constants as C
from forwarder.config import SLUG_CHARS, SLUG_MAX
from forwarder.schemas import (
    CONTROL_CHARS,
    MAX_DEPTH,
    MAX_EMAIL,
    MAX_SAFE_INTEGER,
    MAX_TEXT,
    PHONE_RE,
    PHOTO_TYPES,
    REGISTRATION_PAGE_VISIT,
)

#: Non-blank and free of control characters, as ``schemas.text_value`` requires
#: (tests/test_relay_openapi.py checks both agree on arbitrary strings).
TEXT_PATTERN = rf"^[^{CONTROL_CHARS}]*[^\s{CONTROL_CHARS}][^{CONTROL_CHARS}]*$"
SLUG_PATTERN = rf"^(?!\.{{1,2}}$)[{SLUG_CHARS}]{{1,{SLUG_MAX}}}$"


def _text(description: str, max_length: int = MAX_TEXT) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length,
            "pattern": TEXT_PATTERN, "description": description}


_EMAIL = {"type": "string", "format": "email", "maxLength": MAX_EMAIL,
          "description": "The registered user's email."}
_TIMESTAMP = {"type": "string", "format": "date-time",
              "description": "ISO-8601 with a timezone; forwarded as UTC, ms precision, Z."}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    # An optional field sent as null counts as absent, as in capture().
    return {"anyOf": [schema, {"type": "null"}]}


_ABSENT = {"type": "null", "description": "Not part of this event type; null is as absent."}


def _envelope(status: int, message: str | None, data: dict[str, Any]) -> dict[str, Any]:
    code: dict[str, Any] = {"const": status}
    text: dict[str, Any] = {"type": "string"}
    if message is not None:
        text["const"] = message
    return {"type": "object", "required": ["statusCode", "message", "data"],
            "properties": {"statusCode": code, "message": text, "data": data}}


_FIELD_ERRORS = {
    "type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
    "description": "Field name -> messages; `_body` for the body as a whole.",
}


def _error(status: int, description: str, headers: dict[str, Any] | None = None,
           data: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _envelope(
            status, None, data or {"anyOf": [{"type": "null"}, _FIELD_ERRORS]})}},
    }
    if headers:
        answer["headers"] = headers
    return answer


_ALLOW = {"Allow": {"schema": {"type": "string"}, "required": True,
                    "description": "The methods this path takes."}}
_RETRY = {"Retry-After": {"schema": {"type": "string"}, "required": True}}


def _post(summary: str, message: str, body_ref: str,
          params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"distinctApiKey": []}],
        "parameters": [*params, {
            "name": "Idempotency-Key", "in": "header", "required": False,
            "description": "Same key, same event id: a resend is delivered once.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 256,
                       "pattern": "^[\\x20-\\x7e]+$"},
        }],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{body_ref}"}}}},
        "responses": {
            "200": {
                "description": "The event is in the queue; a worker delivers it.",
                "headers": {"X-Forwarder-Event-Id": {
                    "required": True, "schema": {"type": "string", "format": "uuid"}}},
                "content": {"application/json": {"schema": _envelope(
                    200, message, {"type": "null"})}},
            },
            "400": _error(400, "The body broke a rule; `data` names each field.",
                          data=_FIELD_ERRORS),
            "401": _error(401, "Missing or unknown x-distinct-api-key."),
            "404": _error(404, "No such path."),
            "405": _error(405, "Wrong method.", _ALLOW),
            "413": _error(413, f"Body over {C.RELAY_MAX_BODY} bytes."),
            "415": _error(415, "Content-Type is not application/json."),
            "503": _error(503, "Redis (and any spool) unavailable; nothing was kept.", _RETRY),
        },
    }


def _get(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "responses": {
        **responses, "405": _error(405, "Wrong method.", _ALLOW)}}


_STATUS = {"type": "object", "required": ["status"],
           "properties": {"status": {"type": "string"}}}


def openapi_document() -> dict[str, Any]:
    """The whole document, as a JSON-ready dict."""
    capture_path = C.CAPTURE_PATH.replace("{experience}", "{experienceValue}")
    experience = {
        "name": "experienceValue", "in": "path", "required": True,
        "description": "Experience (campaign) slug Distinct gave you, e.g. fifa-cwc-2025.",
        "schema": {"type": "string", "pattern": SLUG_PATTERN, "minLength": 1,
                   "maxLength": 128},
    }
    common = {"eventValue": _text("Distinct's identifier of the event."),
              "recordCapturedAt": _TIMESTAMP}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "distinct-forwarder relay",
            "version": "1",
            "description": "Distinct's capture endpoints, answered once the event is in "
                           "Redis; workers deliver it to Distinct with retries.",
        },
        "paths": {
            capture_path: {"post": _post(
                "Capture Analytics (Distinct's original endpoint)",
                "Analytics captured successfully.", "CaptureEvent", [experience])},
            C.USER_ANALYTICS_PATH: {"post": _post(
                "User Analytics", "User analytics added successfully.",
                "UserAnalyticsEvent", [])},
            "/healthz": {"get": _get("The process is up.", {
                "200": {"description": "Up.", "content": {"application/json": {
                    "schema": _STATUS}}}})},
            "/readyz": {"get": _get("An event sent now would be kept.", {
                "200": {"description": "Redis answers PING (or a spool is writable).",
                        "content": {"application/json": {"schema": _STATUS}}},
                "503": {"description": "Neither Redis nor a spool would take an event.",
                        "content": {"application/json": {"schema": _STATUS}}}})},
            "/metrics": {"get": _get("Prometheus metrics of all relay workers.", {
                "200": {"description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}})},
            "/openapi.json": {"get": _get("This document.", {
                "200": {"description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}}}})},
        },
        "components": {
            "securitySchemes": {"distinctApiKey": {
                "type": "apiKey", "in": "header", "name": C.API_KEY_HEADER,
                "description": "One of FORWARDER_RELAY_KEYS."}},
            "schemas": {
                "CaptureEvent": {"oneOf": [
                    {"type": "object", "additionalProperties": False,
                     "required": ["type", "eventValue", "recordCapturedAt", "sessionId",
                                  "registrationPageValue"],
                     "properties": {
                         "type": {"const": REGISTRATION_PAGE_VISIT}, **common,
                         "sessionId": _text("The user's registration-page session."),
                         "registrationPageValue": _text("Distinct's registration page id."),
                         "email": _ABSENT,
                     }},
                    {"type": "object", "additionalProperties": False,
                     "required": ["type", "eventValue", "recordCapturedAt", "email"],
                     "properties": {"type": {"enum": list(PHOTO_TYPES)}, **common,
                                    "email": _EMAIL, "sessionId": _ABSENT,
                                    "registrationPageValue": _ABSENT}},
                ]},
                "UserAnalyticsEvent": {
                    "type": "object", "additionalProperties": False,
                    "required": ["feature", "action", "experienceId", "capturedAt"],
                    # At least one identity, and not null.
                    "anyOf": [{"required": [name], "properties": {name: {"type": "string"}}}
                              for name in ("userId", "email", "phone")],
                    "properties": {
                        "userId": _nullable(_text("Your internal user id.")),
                        "email": _nullable(_EMAIL),
                        "phone": _nullable({"type": "string", "pattern": PHONE_RE.pattern,
                                            "description": "E.164, e.g. +14155552671."}),
                        "feature": _text("High-level category, e.g. registration_email."),
                        "action": _text("The interaction, e.g. opened."),
                        "experienceId": _text("Experience id from Distinct, e.g. 47Gop5."),
                        "capturedAt": _TIMESTAMP,
                        "metadata": _nullable({
                            "type": "object",
                            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
                            "description": f"Custom data, at most 8 KiB as JSON, nested at "
                                           f"most {MAX_DEPTH} deep."}),
                    },
                },
                # Any JSON value whose integers JavaScript keeps exactly.
                "JsonValue": {"anyOf": [
                    {"type": ["null", "boolean", "string"]},
                    {"type": "integer", "minimum": -MAX_SAFE_INTEGER,
                     "maximum": MAX_SAFE_INTEGER},
                    {"type": "number", "not": {"type": "integer"}},
                    {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
                    {"type": "object",
                     "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
                ]},
            },
        },
    }
