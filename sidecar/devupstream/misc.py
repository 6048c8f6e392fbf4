"""Models, embeddings, moderations, files and trace ingestion."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from typing import Any

from aiohttp import BodyPartReader, web

from .common import (
    FILE_CONTENT_LIMIT,
    JSON,
    LOG_ENTRY_KEY,
    STORE_LIMIT,
    ApiError,
    StoredFile,
    count_tokens,
    dumps,
    dumps_bytes,
    json_response,
    read_json_object,
    require_model,
    state_of,
)

_CREATED = 1_700_000_000
MODEL_IDS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "omni-moderation-latest",
)
_MODELS = {m: {"id": m, "object": "model", "created": _CREATED, "owned_by": "system"} for m in MODEL_IDS}
_MODELS_LIST_BODY = dumps_bytes({"object": "list", "data": list(_MODELS.values())})

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_MODERATION_RESULT = {
    "flagged": False,
    "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
    "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
    "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
}

EMBEDDING_DIMENSIONS = 8


# ----------------------------------------------------------------------------------------------------
# Models


async def list_models(request: web.Request) -> web.Response:
    return web.Response(body=_MODELS_LIST_BODY, content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    model = _MODELS.get(model_id)
    if model is None:
        raise ApiError(
            404,
            f"The model `{model_id}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    return json_response(model)


# ----------------------------------------------------------------------------------------------------
# Embeddings: a unit vector derived from sha256 of the input, `dimensions` long (default 8).


def embedding_vector(text: str, dimensions: int) -> list[float]:
    digest = b""
    counter = 0
    while len(digest) < dimensions * 4:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    raw = [
        (int.from_bytes(digest[i * 4 : i * 4 + 4], "little") / 0xFFFFFFFF) * 2 - 1 for i in range(dimensions)
    ]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def _embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """(text, tokens) per input; token arrays count one token per element."""
    if isinstance(value, str):
        return [(value, count_tokens(value))]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [(dumps(value), len(value))]
        out: list[tuple[str, int]] = []
        for v in value:
            if isinstance(v, str):
                out.append((v, count_tokens(v)))
            elif isinstance(v, list) and all(isinstance(t, int) for t in v):
                out.append((dumps(v), len(v)))
            else:
                raise ApiError(400, "Invalid 'input': expected strings or token arrays.", param="input")
        return out
    raise ApiError(400, "Invalid 'input': must be a non-empty string or array.", param="input")


async def create_embeddings(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    model = require_model(body)
    inputs = _embedding_inputs(body.get("input"))
    dims = body.get("dimensions")
    dimensions = (
        dims if isinstance(dims, int) and not isinstance(dims, bool) and dims > 0 else EMBEDDING_DIMENSIONS
    )
    as_base64 = body.get("encoding_format") == "base64"
    data: list[JSON] = []
    for index, (text, _tokens) in enumerate(inputs):
        vector = embedding_vector(text, dimensions)
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(t for _, t in inputs)
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


# ----------------------------------------------------------------------------------------------------
# Moderations: never flags.


async def create_moderation(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    value = body.get("input")
    if isinstance(value, str):
        count = 1
    elif isinstance(value, list) and value:
        count = len(value) if all(isinstance(v, str) for v in value) else 1
    else:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input")
    model = body.get("model") if isinstance(body.get("model"), str) else "omni-moderation-latest"
    state = state_of(request)
    return json_response(
        {"id": state.next_id("modr-"), "model": model, "results": [_MODERATION_RESULT] * count}
    )


# ----------------------------------------------------------------------------------------------------
# Files: multipart upload is stream-read; content up to 16 MiB is kept in memory for `/content`.


async def create_file(request: web.Request) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Expected a multipart/form-data upload with 'file' and 'purpose'.", param="file")
    state = state_of(request)
    reader = await request.multipart()
    purpose = "user_data"
    filename: str | None = None
    size = 0
    chunks: list[bytes] = []
    keep = True
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await part.text()).strip() or purpose
        elif part.name == "file":
            filename = part.filename or "upload"
            while chunk := await part.read_chunk(65536):
                size += len(chunk)
                if keep:
                    chunks.append(chunk)
                    if size > FILE_CONTENT_LIMIT:
                        keep = False
                        chunks.clear()
        else:
            await part.release()
    if filename is None:
        raise ApiError(400, "Missing required parameter: 'file'.", param="file")
    entry = request.get(LOG_ENTRY_KEY)
    if entry is not None:
        entry["body_bytes"] = request.content_length or size
    meta: JSON = {
        "id": state.next_id("file-"),
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "expires_at": None,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }
    state.files[meta["id"]] = StoredFile(meta=meta, content=b"".join(chunks) if keep else None)
    while len(state.files) > STORE_LIMIT:
        state.files.popitem(last=False)
    return json_response(meta)


def _file(request: web.Request) -> StoredFile:
    file_id = request.match_info["file_id"]
    stored = state_of(request).files.get(file_id)
    if stored is None:
        raise ApiError(404, f"No such File object: {file_id}", code=None, param="id")
    return stored


async def list_files(request: web.Request) -> web.Response:
    data = [f.meta for f in reversed(state_of(request).files.values())]
    return json_response(
        {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


async def get_file(request: web.Request) -> web.Response:
    return json_response(_file(request).meta)


async def get_file_content(request: web.Request) -> web.Response:
    stored = _file(request)
    if stored.content is None:
        raise ApiError(400, "File content is too large to be retained by dev-upstream.", param="id")
    return web.Response(body=stored.content, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    stored = _file(request)
    del state_of(request).files[stored.meta["id"]]
    return json_response({"id": stored.meta["id"], "object": "file", "deleted": True})


# ----------------------------------------------------------------------------------------------------
# Traces (the Agents SDK exporter): accepted and dropped; the request log keeps the payload.


async def ingest_traces(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


# ----------------------------------------------------------------------------------------------------
# Batches and fine-tuning jobs (the high-risk operations behind approvals): accepted, never run.


def _needs(body: JSON, *names: str) -> None:
    for name in names:
        if not isinstance(body.get(name), str) or not body[name]:
            raise ApiError(400, f"Missing required parameter: '{name}'.", param=name)


async def create_batch(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    _needs(body, "input_file_id", "endpoint", "completion_window")
    now = int(time.time())
    return json_response({
        "id": state_of(request).next_id("batch_"), "object": "batch", "endpoint": body["endpoint"],
        "errors": None, "input_file_id": body["input_file_id"],
        "completion_window": body["completion_window"], "status": "validating", "output_file_id": None,
        "error_file_id": None, "created_at": now,
        "in_progress_at": None, "expires_at": now + 86400, "completed_at": None, "failed_at": None,
        "expired_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    })  # fmt: skip


async def create_fine_tuning_job(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    _needs(body, "model", "training_file")
    return json_response({
        "id": state_of(request).next_id("ftjob-"), "object": "fine_tuning.job", "model": body["model"],
        "created_at": int(time.time()), "finished_at": None, "fine_tuned_model": None,
        "organization_id": "org-dev", "result_files": [], "status": "validating_files",
        "validation_file": body.get("validation_file"), "training_file": body["training_file"],
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
        "trained_tokens": None, "error": None, "seed": body.get("seed") or 42,
    })  # fmt: skip


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/models/{model_id}", get_model)
    r.add_post("/v1/embeddings", create_embeddings)
    r.add_post("/v1/moderations", create_moderation)
    r.add_post("/v1/files", create_file)
    r.add_get("/v1/files", list_files)
    r.add_get("/v1/files/{file_id}", get_file)
    r.add_delete("/v1/files/{file_id}", delete_file)
    r.add_get("/v1/files/{file_id}/content", get_file_content)
    r.add_post("/v1/traces/ingest", ingest_traces)
    r.add_post("/v1/batches", create_batch)
    r.add_post("/v1/fine_tuning/jobs", create_fine_tuning_job)
