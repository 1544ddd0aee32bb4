"""Pages of orders, newest first: the statements, and one statement for all the pages of a loop turn.

A page is `limit` orders with ids below `before` (the cursor's), of one status and of one owner
(each optional): eight shapes of the same keyset read. The pages asked for in one loop turn are
read together, one statement per shape: a LATERAL join runs each page's keyset read, through the
index of its shape, for each row of the parameter arrays. Identical pages (the same first page
of the same owner, which every dashboard asks for) are read once and handed to each caller. A
page alone is its shape's plain keyset read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from service.domain import Order, OrderStatus
from service.store.database import Database

ListQuery = tuple[int, uuid.UUID | None, OrderStatus | None, str | None]
"""limit, the id the page starts below, status and owner (None: any)."""

Shape = tuple[bool, bool, bool]
"""Which of before, status and owner a page has."""

# One page: $1 the limit, then the id it starts below, its status and its owner, those it has, in
# that order. Each through an index in id order: the primary key, (status, id) or (owner, id).
LIST_ONE: dict[Shape, str] = {
    (False, False, False): (
        "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders ORDER BY id DESC LIMIT $1"
    ),
    (True, False, False): (
        "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders"
        " WHERE id < $2 ORDER BY id DESC LIMIT $1"
    ),
    (False, True, False): (
        "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders"
        " WHERE status = $2 ORDER BY id DESC LIMIT $1"
    ),
    (True, True, False): (
        "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders"
        " WHERE id < $2 AND status = $3 ORDER BY id DESC LIMIT $1"
    ),
    (False, False, True): (
        "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders"
        " WHERE owner = $2 ORDER BY id DESC LIMIT $1"
    ),
    (True, False, True): (
        "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders"
        " WHERE id < $2 AND owner = $3 ORDER BY id DESC LIMIT $1"
    ),
    (False, True, True): (
        "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders"
        " WHERE status = $2 AND owner = $3 ORDER BY id DESC LIMIT $1"
    ),
    (True, True, True): (
        "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders"
        " WHERE id < $2 AND status = $3 AND owner = $4 ORDER BY id DESC LIMIT $1"
    ),
}

# Many pages of one shape: the same parameters, each an array with an item per page; the page's
# read runs once per item (LATERAL), and each row starts with the number of its page (1, 2, ...).
_PAGES = "SELECT q.page, o.* FROM unnest("
_PAGE = ") AS o ORDER BY q.page, o.id DESC"
_READ = "CROSS JOIN LATERAL (SELECT id, product, quantity, status, version, created_at, updated_at FROM orders"
LIST_MANY: dict[Shape, str] = {
    (False, False, False): (
        f"{_PAGES}$1::integer[]) WITH ORDINALITY AS q(lim, page) {_READ} ORDER BY id DESC LIMIT q.lim{_PAGE}"
    ),
    (True, False, False): (
        f"{_PAGES}$1::integer[], $2::uuid[]) WITH ORDINALITY AS q(lim, before, page)"
        f" {_READ} WHERE id < q.before ORDER BY id DESC LIMIT q.lim{_PAGE}"
    ),
    (False, True, False): (
        f"{_PAGES}$1::integer[], $2::text[]) WITH ORDINALITY AS q(lim, status, page)"
        f" {_READ} WHERE status = q.status ORDER BY id DESC LIMIT q.lim{_PAGE}"
    ),
    (True, True, False): (
        f"{_PAGES}$1::integer[], $2::uuid[], $3::text[]) WITH ORDINALITY AS q(lim, before, status, page)"
        f" {_READ} WHERE id < q.before AND status = q.status ORDER BY id DESC LIMIT q.lim{_PAGE}"
    ),
    (False, False, True): (
        f"{_PAGES}$1::integer[], $2::text[]) WITH ORDINALITY AS q(lim, owner, page)"
        f" {_READ} WHERE owner = q.owner ORDER BY id DESC LIMIT q.lim{_PAGE}"
    ),
    (True, False, True): (
        f"{_PAGES}$1::integer[], $2::uuid[], $3::text[]) WITH ORDINALITY AS q(lim, before, owner, page)"
        f" {_READ} WHERE id < q.before AND owner = q.owner ORDER BY id DESC LIMIT q.lim{_PAGE}"
    ),
    (False, True, True): (
        f"{_PAGES}$1::integer[], $2::text[], $3::text[]) WITH ORDINALITY AS q(lim, status, owner, page)"
        f" {_READ} WHERE status = q.status AND owner = q.owner ORDER BY id DESC LIMIT q.lim{_PAGE}"
    ),
    (True, True, True): (
        f"{_PAGES}$1::integer[], $2::uuid[], $3::text[], $4::text[]) WITH ORDINALITY AS q(lim, before, status, owner, page)"
        f" {_READ} WHERE id < q.before AND status = q.status AND owner = q.owner ORDER BY id DESC LIMIT q.lim{_PAGE}"
    ),
}


def _shape(query: ListQuery) -> Shape:
    _, before, status, owner = query
    return (before is not None, status is not None, owner is not None)


def _parameters(query: ListQuery) -> list[Any]:
    limit, before, status, owner = query
    given = (before, None if status is None else status.value, owner)
    return [limit, *(value for value in given if value is not None)]


async def list_many(
    db: Database, queries: Sequence[ListQuery], to_order: Callable[[tuple[Any, ...]], Order]
) -> list[list[Order]]:
    """The page of each query, in order: identical queries read once, one statement per shape."""
    distinct = list(dict.fromkeys(queries))
    pages: dict[ListQuery, list[Order]] = {}
    by_shape: dict[Shape, list[ListQuery]] = {}
    for query in distinct:
        by_shape.setdefault(_shape(query), []).append(query)
    for shape, group in by_shape.items():
        if len(group) == 1:
            rows = await db.fetch(LIST_ONE[shape], _parameters(group[0]))
            pages[group[0]] = [to_order(row) for row in rows]
            continue
        columns = [list(column) for column in zip(*(_parameters(query) for query in group), strict=True)]
        found: list[list[Order]] = [[] for _ in group]
        for row in await db.fetch(LIST_MANY[shape], columns):
            found[row[0] - 1].append(to_order(row[1:]))
        pages.update(zip(group, found, strict=True))
    return [list(pages[query]) for query in queries]
