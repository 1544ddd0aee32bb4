"""Who may do what: the caller's context, the scope each operation needs, and which orders a
caller may see. Business rules of the service layer, used by OrderService and the transports."""

from __future__ import annotations

import msgspec

from service.domain import ANONYMOUS, SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, PermissionDenied, Principal


class RequestContext(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling, and where a change came from (carried into its event)."""

    principal: Principal = ANONYMOUS
    request_id: str | None = None
    traceparent: str | None = None


NO_CONTEXT = RequestContext()


def require(principal: Principal, scope: str) -> None:
    """Refuse (403 / PERMISSION_DENIED) a caller without `scope`."""
    if scope not in principal.scopes:
        raise PermissionDenied(scope)


# The scope each operation needs: the one table transports and the service both check against.
OPERATION_SCOPES = {
    "create": SCOPE_WRITE,
    "get": SCOPE_READ,
    "list": SCOPE_READ,
    "update": SCOPE_WRITE,
    "delete": SCOPE_WRITE,
    "confirm": SCOPE_WRITE,
    "watch": SCOPE_READ,
}


def authorize(operation: str, principal: Principal) -> None:
    """Refuse a caller whose token lacks the operation's scope. Transports call it as soon as the
    caller is known, so that a caller without the scope learns nothing about ids or bodies."""
    require(principal, OPERATION_SCOPES[operation])


def owner_filter(principal: Principal) -> str | None:
    """The owner whose orders the caller sees; None for an admin, who sees every owner's."""
    return None if SCOPE_ADMIN in principal.scopes else principal.owner


def may_see(principal: Principal, owner: str) -> bool:
    """An order is visible to its owner and to admins; to anyone else it does not exist."""
    return owner == principal.owner or SCOPE_ADMIN in principal.scopes


def may_watch(owner: str | None, ctx: RequestContext) -> bool:
    """Whether the caller of `ctx` may see a change of an order owned by `owner` (None: a change
    written before events named their owner, shown to admins only): the same rule as reading."""
    if owner is None:
        return SCOPE_ADMIN in ctx.principal.scopes
    return may_see(ctx.principal, owner)


def sees_every_owner(ctx: RequestContext) -> bool:
    """True when `may_watch` holds whatever the owner, so the feed need not ask it per change."""
    return SCOPE_ADMIN in ctx.principal.scopes  # AUTH_MODE=none: the anonymous principal is one
