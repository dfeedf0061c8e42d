"""API keys with roles: one dependency authenticates and authorizes every route.

A key arrives as ``Authorization: Bearer <key>`` (what OpenAI clients send) or
``X-API-Key: <key>``.  Its SHA-256 digest is compared with every configured
digest in constant time (:func:`hmac.compare_digest`, no early exit), so
neither the answer's content nor its timing tells which digest came close.
Roles are ordered: read < write < admin.  A missing or unknown key is a 401
(with ``WWW-Authenticate``); a known key whose role is too low is a 403.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.types import DecoratedCallable

from paramloop.server.settings import ROLES, ApiKey, Role

#: The OpenAPI security schemes every protected route accepts.
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key, as OpenAI clients send it.",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key."},
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: the key's name (``anonymous`` with auth disabled) and its role."""

    name: str
    role: Role


class AuthError(Exception):
    """401 (``status=401``: no or unknown key) or 403 (the key's role is too low)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def digest(key: str) -> str:
    """The SHA-256 hex digest under which a key is configured."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def identify(keys: tuple[ApiKey, ...], presented: str) -> ApiKey | None:
    """The configured key whose digest matches, compared with every one in constant time."""
    candidate = digest(presented).encode()
    found = None
    for key in keys:
        if hmac.compare_digest(candidate, key.sha256.encode()):
            found = key
    return found


class Require:
    """The dependency of every protected route: ``Depends(Require("write"))``."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.rank = ROLES.index(role)

    async def __call__(self, request: Request) -> Principal:
        settings = request.app.state.settings
        if settings.auth_disabled:
            principal = Principal("anonymous", "admin")
        else:
            presented = _presented(request)
            if not presented:
                raise AuthError(
                    401, "missing API key: send Authorization: Bearer <key> or X-API-Key"
                )
            key = identify(settings.api_keys, presented)
            if key is None:
                raise AuthError(401, "unknown API key")
            principal = Principal(key.name, key.role)
            if ROLES.index(key.role) < self.rank:
                raise AuthError(
                    403,
                    f"this route needs the {self.role!r} role; the key {key.name!r} has {key.role!r}",
                )
        request.state.principal = principal
        return principal


def _presented(request: Request) -> str | None:
    """The key in ``Authorization: Bearer …``, else in ``X-API-Key``."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


class Routes:
    """Routes of one role, registered on the app itself with that role's :class:`Require`.

    The routes stay in the app's own (flat) route list: nested routers cost a
    second round of route matching on every request.  The role of each route
    is remembered for the OpenAPI document (:func:`document_security`).
    """

    def __init__(
        self,
        app: FastAPI,
        role: Role | None,
        roles: dict[tuple[str, str], Role],
        *,
        counted: Callable[..., Any] | None = None,
    ) -> None:
        self.app = app
        self.role = role
        # ``counted`` runs after the key is known (the rate limit of write routes).
        self.dependencies = [] if role is None else [Depends(Require(role))]
        if counted is not None:
            self.dependencies.append(Depends(counted))
        self.roles = roles

    def _remember(self, path: str, method: str) -> None:
        if self.role is not None:
            self.roles[(path, method.lower())] = self.role

    def get(self, path: str, **kwargs: Any) -> Callable[[DecoratedCallable], DecoratedCallable]:
        self._remember(path, "get")
        return self.app.get(path, dependencies=self.dependencies, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[DecoratedCallable], DecoratedCallable]:
        self._remember(path, "post")
        return self.app.post(path, dependencies=self.dependencies, **kwargs)

    def add_api_route(self, path: str, endpoint: Any, *, methods: list[str], **kwargs: Any) -> None:
        for method in methods:
            self._remember(path, method)
        self.app.add_api_route(
            path, endpoint, methods=methods, dependencies=self.dependencies, **kwargs
        )


def document_security(app: FastAPI, roles: dict[tuple[str, str], Role]) -> None:
    """Declare the key schemes in the OpenAPI document, and each protected route's role."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for (path, method), role in roles.items():
            operation = schema["paths"].get(path, {}).get(method)
            if operation is not None:
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                operation["description"] = (
                    operation.get("description", "") + f"\n\nNeeds the `{role}` role."
                ).strip()
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
