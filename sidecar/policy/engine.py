"""The interface both decision engines implement."""

from __future__ import annotations

from typing import Any, Protocol

from sidecar.documents import PolicyInput


class EngineError(Exception):
    """The engine could not answer (down, timed out, or the policy failed to evaluate)."""


class PolicyEngine(Protocol):
    name: str

    @property
    def revision(self) -> str:
        """The revision of the loaded bundle ('' when unknown)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def evaluate(self, doc: PolicyInput) -> Any:
        """The raw document at the decision path; None when it is undefined. Raises EngineError."""
        ...

    async def query(self, path: str, doc: dict[str, Any]) -> Any:
        """Evaluate another document of the bundle (e.g. the approver check). Raises EngineError."""
        ...

    async def ready(self) -> tuple[bool, str]:
        """Whether a policy is loaded and the engine answers, with a short reason."""
        ...
