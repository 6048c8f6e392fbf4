"""A local, deterministic OpenAI-compatible stand-in upstream (`sidecar dev-upstream`).

Routes: `POST /v1/responses` (JSON and SSE), `GET|DELETE /v1/responses/{id}`, `POST /v1/chat/completions`
(JSON and SSE), `GET /v1/models[/{id}]`, `POST /v1/embeddings`, `POST /v1/moderations`, `POST|GET /v1/files`,
`GET|DELETE /v1/files/{id}`, `GET /v1/files/{id}/content`, `POST /v1/traces/ingest` (204); anything else is a
404 OpenAI error (`Invalid URL (METHOD /path)`).

Answers (all deterministic):
- tool outputs after the last user message (Responses `function_call_output` items, Chat `role: tool`
  messages) -> text `"Tool result: <output>"`, one line per output;
- else, if the request offers a function tool (and `tool_choice` is not `"none"`) -> a call of the first
  function tool (or the one named by `tool_choice`) with arguments sampled from its JSON schema: strings
  `"sample"`, numbers 1, booleans true, enums their first value, `const`/`default` as given, arrays one item,
  every property present;
- else -> text `"Echo: <last user message text>"`.

Usage: a token is a run of word characters or one punctuation character (regex `\\w+|[^\\w\\s]`). Input
tokens count the `instructions` and the text fields of `input` / `messages` (message content strings and
parts' `text`, function-call `arguments`, tool outputs); output tokens count the produced text or arguments.
`max_output_tokens` / `max_completion_tokens` / `max_tokens` cut the output after that many tokens
(Responses: status `incomplete`, `incomplete_details.reason = "max_output_tokens"`, stream ends with
`response.incomplete`; Chat: `finish_reason = "length"`).

Request headers for tests: `x-dev-upstream-fail: <status>` (OpenAI error with that status),
`x-dev-upstream-delay-ms: N` (delay before the response), `x-dev-upstream-stream-delay-ms: N` (sleep between
SSE events), `x-dev-upstream-drop: 1` (close the connection without a response),
`x-dev-upstream-stream-fail: 1` (error event mid-stream), `x-dev-upstream-reply: <text>` (answer this text),
`x-dev-upstream-tool-args: <json>` (use these tool-call arguments).

Like OpenAI: a wrong API key gets a 401 that quotes the key's first 8 and last 4 characters (in the
message, and here also in `WWW-Authenticate`; as plain text for `Accept: text/plain`), and every `/v1`
response names the account in `openai-organization` / `openai-project` (the request's
OpenAI-Organization / -Project, else `org-devupstream` / `proj_devupstream`).

Test endpoints (never behind `--api-key`, never logged or counted):
- `GET /_dev/requests[?path=/v1/...]`: the last 1000 requests, oldest first, each
  `{"seq", "time", "method", "path", "query", "raw_path" (the request target as received, byte for byte),
  "headers": {lower-case name: value}, "body": raw text
  ("" for multipart uploads), "body_bytes", "status" (0 when dropped)}`; `DELETE /_dev/requests` clears it
  and answers `{"cleared": n}`.
- `GET /_dev/stats`: `{"requests", "streams_started", "streams_completed", "streams_cancelled"}` (a stream
  is cancelled when its client goes away before the last event); `DELETE /_dev/stats` zeroes it.
- `GET /_dev/health`: `{"status": "ok"}`.
- `POST /_dev/fail-next` `{"status": 500, "count": 1}`: the next `count` /v1 calls get that OpenAI error
  (for a failure of a request identical to one that succeeds, e.g. an approved one).
Every response carries an `x-request-id`.
"""

from __future__ import annotations

from .server import create_app, main

__all__ = ["create_app", "main"]
