"""Policy-enforcing sidecar for OpenAI Agents SDK agents."""

__version__ = "0.1.0"
