import pytest

from sidecar.pipeline.classify import TABLE, classify


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("POST", "/v1/responses", "responses.create"),
        ("GET", "/v1/responses/resp_123", "responses.retrieve"),
        ("GET", "/v1/responses/resp_123/input_items", "responses.input_items"),
        ("POST", "/v1/chat/completions", "chat.completions.create"),
        ("POST", "/v1/embeddings", "embeddings.create"),
        ("POST", "/v1/moderations", "moderations.create"),
        ("GET", "/v1/models", "models.list"),
        ("GET", "/v1/models/gpt-4o", "models.retrieve"),
        ("POST", "/v1/files", "files.create"),
        ("GET", "/v1/files", "files.list"),
        ("GET", "/v1/files/file-abc", "files.retrieve"),
        ("GET", "/v1/files/file-abc/content", "files.content"),
        ("DELETE", "/v1/files/file-abc", "files.delete"),
        ("POST", "/v1/uploads", "uploads.create"),
        ("POST", "/v1/uploads/upload_1/parts", "uploads.parts.create"),
        ("POST", "/v1/fine_tuning/jobs", "fine_tuning.jobs.create"),
        ("GET", "/v1/fine_tuning/jobs/ftjob-1/events", "fine_tuning.jobs.events.list"),
        ("POST", "/v1/batches", "batches.create"),
        ("POST", "/v1/batches/batch_1/cancel", "batches.cancel"),
        ("POST", "/v1/vector_stores/vs_1/file_batches", "vector_stores.file_batches.create"),
        ("GET", "/v1/vector_stores/vs_1/files/file-1/content", "vector_stores.files.content"),
        ("GET", "/v1/containers/c_1/files/f_1/content", "containers.files.content"),
        ("POST", "/v1/conversations/conv_1/items", "conversations.items.create"),
        ("POST", "/v1/audio/transcriptions", "audio.transcriptions.create"),
        ("POST", "/v1/images/generations", "images.generate"),
        ("POST", "/v1/realtime/client_secrets", "realtime.client_secrets.create"),
        ("POST", "/v1/traces/ingest", "traces.ingest"),
        ("GET", "/v1/organization/users", "organization.users.read"),
        ("POST", "/v1/organization/admin_api_keys", "organization.admin_api_keys.write"),
        ("POST", "/v1/responses/", "unknown"),  # never canonical: refused before classification
        ("PUT", "/v1/responses", "unknown"),
        ("POST", "/v1/nothing-here", "unknown"),
        ("GET", "/v1/files/a/b/c/d", "unknown"),
    ],
)
def test_classify(method: str, path: str, operation: str) -> None:
    assert classify(method, path) == operation


def test_every_table_row_is_reachable() -> None:
    # A row shadowed by an earlier one would never be returned.
    for method, template, operation in TABLE:
        assert classify(method, template.replace("{id}", "x_1")) == operation


def test_spec_operations_are_covered() -> None:
    named = {op for _, _, op in TABLE}
    for required in [
        "responses.create", "responses.retrieve", "responses.input_items", "chat.completions.create",
        "embeddings.create", "moderations.create", "models.list", "models.retrieve", "files.create",
        "files.list", "files.retrieve", "files.content", "files.delete", "fine_tuning.jobs.create",
        "batches.create", "realtime.client_secrets.create", "traces.ingest",
    ]:  # fmt: skip
        assert required in named
    for family in [
        "uploads.",
        "fine_tuning.jobs.",
        "batches.",
        "vector_stores.",
        "conversations.",
        "audio.",
        "images.",
    ]:
        assert any(op.startswith(family) for op in named), family
