"""Who is calling: the identity modes behind `SIDECAR_AUTH_MODE`, one module each.

- `static` (sidecar.identity.static): caller keys from a JSON file;
- `jwt` (sidecar.identity.jwt): the API key is a JWT from an OIDC issuer or Kubernetes, verified against
  the issuer's JWKS (sidecar.identity.jwks) — `JwtVerifier` is reusable wherever a JWT must be checked;
- `pod` (sidecar.identity.pod): loopback callers are the pod's own workload.

Any mode can be combined with an end user's token (sidecar.identity.end_user). The stage that picks the
mode and applies the end-user token is sidecar.pipeline.authenticate.
"""

from sidecar.identity.base import Authenticator, IdentityError, TokenError, bearer_token
from sidecar.identity.jwt import JwtConfig, JwtVerifier

__all__ = ["Authenticator", "IdentityError", "JwtConfig", "JwtVerifier", "TokenError", "bearer_token"]
