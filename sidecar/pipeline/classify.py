"""Stage 2: which OpenAI operation is this (docs/operations.md).

Table-driven: each row is (method, path template, operation). `{id}` matches one path segment.
Templates without placeholders are looked up in a dict; the rest are tried in table order.
"""

from __future__ import annotations

import re
from typing import Final

# fmt: off
TABLE: Final[tuple[tuple[str, str, str], ...]] = (
    ("POST",   "/v1/responses",                                  "responses.create"),
    ("POST",   "/v1/responses/input_tokens",                     "responses.input_tokens"),
    ("POST",   "/v1/responses/compact",                          "responses.compact"),
    ("GET",    "/v1/responses/{id}",                             "responses.retrieve"),
    ("DELETE", "/v1/responses/{id}",                             "responses.delete"),
    ("POST",   "/v1/responses/{id}/cancel",                      "responses.cancel"),
    ("GET",    "/v1/responses/{id}/input_items",                 "responses.input_items"),
    ("POST",   "/v1/chat/completions",                           "chat.completions.create"),
    ("GET",    "/v1/chat/completions",                           "chat.completions.list"),
    ("GET",    "/v1/chat/completions/{id}",                      "chat.completions.retrieve"),
    ("POST",   "/v1/chat/completions/{id}",                      "chat.completions.update"),
    ("DELETE", "/v1/chat/completions/{id}",                      "chat.completions.delete"),
    ("GET",    "/v1/chat/completions/{id}/messages",             "chat.completions.messages.list"),
    ("POST",   "/v1/completions",                                "completions.create"),
    ("POST",   "/v1/embeddings",                                 "embeddings.create"),
    ("POST",   "/v1/moderations",                                "moderations.create"),
    ("GET",    "/v1/models",                                     "models.list"),
    ("GET",    "/v1/models/{id}",                                "models.retrieve"),
    ("DELETE", "/v1/models/{id}",                                "models.delete"),
    ("POST",   "/v1/files",                                      "files.create"),
    ("GET",    "/v1/files",                                      "files.list"),
    ("GET",    "/v1/files/{id}",                                 "files.retrieve"),
    ("DELETE", "/v1/files/{id}",                                 "files.delete"),
    ("GET",    "/v1/files/{id}/content",                         "files.content"),
    ("POST",   "/v1/uploads",                                    "uploads.create"),
    ("POST",   "/v1/uploads/{id}/parts",                         "uploads.parts.create"),
    ("POST",   "/v1/uploads/{id}/complete",                      "uploads.complete"),
    ("POST",   "/v1/uploads/{id}/cancel",                        "uploads.cancel"),
    ("POST",   "/v1/fine_tuning/jobs",                           "fine_tuning.jobs.create"),
    ("GET",    "/v1/fine_tuning/jobs",                           "fine_tuning.jobs.list"),
    ("GET",    "/v1/fine_tuning/jobs/{id}",                      "fine_tuning.jobs.retrieve"),
    ("POST",   "/v1/fine_tuning/jobs/{id}/cancel",               "fine_tuning.jobs.cancel"),
    ("POST",   "/v1/fine_tuning/jobs/{id}/pause",                "fine_tuning.jobs.pause"),
    ("POST",   "/v1/fine_tuning/jobs/{id}/resume",               "fine_tuning.jobs.resume"),
    ("GET",    "/v1/fine_tuning/jobs/{id}/events",               "fine_tuning.jobs.events.list"),
    ("GET",    "/v1/fine_tuning/jobs/{id}/checkpoints",          "fine_tuning.jobs.checkpoints.list"),
    ("POST",   "/v1/batches",                                    "batches.create"),
    ("GET",    "/v1/batches",                                    "batches.list"),
    ("GET",    "/v1/batches/{id}",                               "batches.retrieve"),
    ("POST",   "/v1/batches/{id}/cancel",                        "batches.cancel"),
    ("POST",   "/v1/vector_stores",                              "vector_stores.create"),
    ("GET",    "/v1/vector_stores",                              "vector_stores.list"),
    ("GET",    "/v1/vector_stores/{id}",                         "vector_stores.retrieve"),
    ("POST",   "/v1/vector_stores/{id}",                         "vector_stores.update"),
    ("DELETE", "/v1/vector_stores/{id}",                         "vector_stores.delete"),
    ("POST",   "/v1/vector_stores/{id}/search",                  "vector_stores.search"),
    ("POST",   "/v1/vector_stores/{id}/files",                   "vector_stores.files.create"),
    ("GET",    "/v1/vector_stores/{id}/files",                   "vector_stores.files.list"),
    ("GET",    "/v1/vector_stores/{id}/files/{id}",              "vector_stores.files.retrieve"),
    ("POST",   "/v1/vector_stores/{id}/files/{id}",              "vector_stores.files.update"),
    ("DELETE", "/v1/vector_stores/{id}/files/{id}",              "vector_stores.files.delete"),
    ("GET",    "/v1/vector_stores/{id}/files/{id}/content",      "vector_stores.files.content"),
    ("POST",   "/v1/vector_stores/{id}/file_batches",            "vector_stores.file_batches.create"),
    ("GET",    "/v1/vector_stores/{id}/file_batches/{id}",       "vector_stores.file_batches.retrieve"),
    ("POST",   "/v1/vector_stores/{id}/file_batches/{id}/cancel", "vector_stores.file_batches.cancel"),
    ("GET",    "/v1/vector_stores/{id}/file_batches/{id}/files", "vector_stores.file_batches.files.list"),
    ("POST",   "/v1/containers",                                 "containers.create"),
    ("GET",    "/v1/containers",                                 "containers.list"),
    ("GET",    "/v1/containers/{id}",                            "containers.retrieve"),
    ("DELETE", "/v1/containers/{id}",                            "containers.delete"),
    ("POST",   "/v1/containers/{id}/files",                      "containers.files.create"),
    ("GET",    "/v1/containers/{id}/files",                      "containers.files.list"),
    ("GET",    "/v1/containers/{id}/files/{id}",                 "containers.files.retrieve"),
    ("DELETE", "/v1/containers/{id}/files/{id}",                 "containers.files.delete"),
    ("GET",    "/v1/containers/{id}/files/{id}/content",         "containers.files.content"),
    ("POST",   "/v1/conversations",                              "conversations.create"),
    ("GET",    "/v1/conversations/{id}",                         "conversations.retrieve"),
    ("POST",   "/v1/conversations/{id}",                         "conversations.update"),
    ("DELETE", "/v1/conversations/{id}",                         "conversations.delete"),
    ("POST",   "/v1/conversations/{id}/items",                   "conversations.items.create"),
    ("GET",    "/v1/conversations/{id}/items",                   "conversations.items.list"),
    ("GET",    "/v1/conversations/{id}/items/{id}",              "conversations.items.retrieve"),
    ("DELETE", "/v1/conversations/{id}/items/{id}",              "conversations.items.delete"),
    ("POST",   "/v1/audio/speech",                               "audio.speech.create"),
    ("POST",   "/v1/audio/transcriptions",                       "audio.transcriptions.create"),
    ("POST",   "/v1/audio/translations",                         "audio.translations.create"),
    ("POST",   "/v1/images/generations",                         "images.generate"),
    ("POST",   "/v1/images/edits",                               "images.edit"),
    ("POST",   "/v1/images/variations",                          "images.create_variation"),
    ("POST",   "/v1/realtime/client_secrets",                    "realtime.client_secrets.create"),
    ("POST",   "/v1/realtime/sessions",                          "realtime.sessions.create"),
    ("POST",   "/v1/realtime/transcription_sessions",            "realtime.transcription_sessions.create"),
    ("POST",   "/v1/traces/ingest",                              "traces.ingest"),
)
# fmt: on

_VERBS: Final = {"GET": "read", "POST": "write", "DELETE": "delete", "PUT": "write", "PATCH": "write"}
_EXACT: dict[tuple[str, str], str] = {}
_PATTERNS: list[tuple[str, re.Pattern[str], str]] = []
for _method, _template, _operation in TABLE:
    if "{id}" in _template:
        _regex = re.escape(_template).replace(re.escape("{id}"), "[^/]+")
        _PATTERNS.append((_method, re.compile(_regex + r"\Z"), _operation))
    else:
        _EXACT[(_method, _template)] = _operation


def classify(method: str, path: str) -> str:
    """Map an HTTP method and canonical path (sidecar.pipeline.canonical) to an operation, or `unknown`.

    Exact: the canonical path has no trailing slash, empty or dot segment, so none is forgiven here.
    """
    operation = _EXACT.get((method, path))
    if operation is not None:
        return operation
    for row_method, pattern, operation in _PATTERNS:
        if row_method == method and pattern.match(path):
            return operation
    if path.startswith("/v1/organization/") or path == "/v1/organization":
        # The admin API is large and growing; every call to it is `organization.<resource>.<verb>`.
        resource = path.removeprefix("/v1/organization").strip("/").split("/", 1)[0] or "root"
        return f"organization.{resource}.{_VERBS.get(method, method.lower())}"
    return "unknown"
