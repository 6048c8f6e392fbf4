"""PII detection (Presidio, offline) and masking for the sidecar."""
