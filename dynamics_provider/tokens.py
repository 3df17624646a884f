"""One token per (identity, audience) per process: the cache in front of an identity's azure-identity
credential that every client and thread shares, so eight threads starting at once cause one token request,
and a token refused by a service is replaced by a really new one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from azure.core.credentials import AccessTokenInfo, SupportsTokenInfo, TokenRequestOptions

from .auth import DeployerSettings
from .credentials import (
    PUBLIC_CLIENT_ID,
    Identity,
    client_secret_identity,
    deployer_identity,
    password_identity,
)

# A cached token is used until this long before it expires (capped to a tenth of its lifetime).
_REFRESH_MARGIN_SECONDS = 300.0


class TokenCache:
    """Tokens of one identity, one per scope, with one lock per scope: concurrent callers of a scope wait
    for the one request in flight. A token is renewed a tenth of its lifetime (at most five minutes, plus a
    second for clock skew) before it expires, never sooner than half its lifetime. `get_token_info` makes
    it an azure-core SupportsTokenInfo, which the pipeline's bearer policy asks."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._cache: dict[str, tuple[AccessTokenInfo, float]] = {}  # scope -> (token, renew at, epoch s)
        self._credential: SupportsTokenInfo | None = None

    def __repr__(self) -> str:
        return f"<TokenCache {self.identity.description}>"

    def _scope_lock(self, scope: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(scope, threading.Lock())

    def _source(self) -> SupportsTokenInfo:
        with self._guard:
            credential = self._credential
        if credential is None:
            credential = self.identity.credential()
            with self._guard:
                self._credential = credential = self._credential or credential
        return credential

    def get_token(self, scope: str) -> str:
        return self.get_token_info(scope).token

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        (scope,) = scopes  # one audience per token
        if options and options.get("claims"):  # a claims challenge: a token with those claims, not cached
            return self.identity.fetch(self._source(), scope, {"claims": options["claims"]})
        with self._scope_lock(scope):
            cached = self._cache.get(scope)
            if cached is not None and time.time() < cached[1]:
                return cached[0]
            asked_at = time.time()
            token = self.identity.fetch(self._source(), scope)
            lifetime = max(token.expires_on - asked_at, 0.0)
            margin = min(lifetime / 2.0, min(_REFRESH_MARGIN_SECONDS, lifetime / 10.0) + 1.0)
            self._cache[scope] = (token, token.expires_on - margin)
            return token

    def invalidate(self, scope: str) -> None:
        """Forget the scope's token and the credential (whose msal cache would hand the same token back)."""
        with self._scope_lock(scope):
            self._cache.pop(scope, None)
            with self._guard:
                self._credential = None

    def close(self) -> None:
        """Nothing to release: transports close with the credential objects."""

    def __enter__(self) -> TokenCache:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


TokenProvider = TokenCache  # the name clients and callers have typed against

_DEPLOYER_CACHE: dict[DeployerSettings, TokenCache] = {}
_DEPLOYER_LOCK = threading.Lock()


def deployer_tokens(settings: DeployerSettings) -> TokenCache:
    """The process-wide tokens of the deploying identity (the same object for equal settings). A missing
    credential or a refused authority host raises here, before anything is sent."""
    with _DEPLOYER_LOCK:
        tokens = _DEPLOYER_CACHE.get(settings)
        if tokens is None:
            tokens = _DEPLOYER_CACHE[settings] = TokenCache(deployer_identity(settings))
        return tokens


def client_secret_tokens(authority: str, client_id: str, client_secret: str, *,
                         ca_bundle: str | None = None) -> TokenCache:
    """Client-credentials tokens for an app with a secret (the lead writer's app); a new cache per call."""
    return TokenCache(client_secret_identity(authority, client_id, client_secret, ca_bundle=ca_bundle))


def password_tokens(authority: str, username: str, password: str, *, client_id: str = PUBLIC_CLIENT_ID,
                    ca_bundle: str | None = None) -> TokenCache:
    """Resource-owner password tokens for a user (the Office 365 lead writer); a new cache per call."""
    return TokenCache(password_identity(authority, username, password, client_id=client_id, ca_bundle=ca_bundle))
