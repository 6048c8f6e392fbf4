"""The schema a bundle's data must match, as the bundle declares it (rego/README.md, "Checking data.json").

The bundle's `.manifest` names it in its metadata: `{"metadata": {"data_schema": ...}}`, either as
"sidecar:<file>", a schema shipped with the sidecar (the shipped bundle says "sidecar:data.schema.json"),
or as the schema object itself. The manifest is the one place that survives `opa build` and
`sidecar policy build` and is covered by a bundle's signature; a schema file next to data.json would
not be (OPA's loader reads every .json file of a directory as data, and `opa build` drops other files).
A bundle that declares no schema is not checked.
"""

from __future__ import annotations

from typing import Any

from jsonschema.protocols import Validator

from sidecar import schemas

KEY = "data_schema"
_SHOWN = 20  # enough to fix a file in one pass; a wholesale mistake would otherwise flood the log line


class DataSchemaError(ValueError):
    """The bundle's data does not match its schema, or the schema it declares is unusable."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def declared(manifest: dict[str, Any]) -> tuple[str, Validator] | None:
    """(a label for messages, the validator) of the schema the manifest declares; None without one."""
    metadata = manifest.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise DataSchemaError(".manifest metadata must be an object")
    if KEY not in metadata:
        return None
    spec = metadata[KEY]
    try:
        if isinstance(spec, str):
            return spec, schemas.shipped_validator(spec)
        if isinstance(spec, dict):
            return "the .manifest's inline schema", schemas.validator(spec)
    except schemas.InvalidSchema as exc:
        raise DataSchemaError(f".manifest metadata.{KEY}: {exc}") from None
    raise DataSchemaError(
        f".manifest metadata.{KEY} must be a shipped schema's name ({schemas.DATA!r}) or a schema object"
    )


def check(manifest: dict[str, Any], data: dict[str, Any]) -> str:
    """Raise DataSchemaError listing every problem; returns the schema's label ("" when none applies)."""
    found = declared(manifest)
    if found is None:
        return ""
    label, validator = found
    try:
        problems = schemas.problems(validator, data)
    except schemas.InvalidSchema as exc:
        raise DataSchemaError(f"{label}: {exc}") from None
    if problems:
        count = f" ({len(problems)} problems)" if len(problems) > 1 else ""
        more = [f"... and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else []
        shown = problems[:_SHOWN] + more
        # One line, so that a refused reload is one log line naming every key.
        raise DataSchemaError(f"data does not match {label}{count}: " + "; ".join(shown), problems)
    return label
