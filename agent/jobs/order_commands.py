"""The ``order.*`` commands: how the central system fills and steers the order book.

``order.push`` (orders in), ``order.hold``, ``order.release``, ``order.cancel`` (each also
an ``order_state`` event), ``order.get`` (by order id or any code) and ``order.answer``
(the reply to the bench's ``order.request`` event). Args are checked against the JSON
Schemas below by the command channel, then each order once more by
:class:`~agent.jobs.orders.Order` for the rules across fields (a SKU once per order, a
barcode naming one SKU); both name the field that is wrong. ``docs/mqtt-api.md`` has
examples.
"""

from __future__ import annotations

from typing import Any

import jsonschema
from pydantic import ValidationError

from agent.commands import CommandChannel
from agent.errors import CommandError
from agent.jobs.order_book import OrderBook, OrderError
from agent.jobs.orders import ORDER_SCHEMA, Order

_ID = {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$",
       "description": "printable ASCII without spaces, 1 to 128 characters"}
_REASON = {"type": "string", "minLength": 1, "maxLength": 500}
_ORDER = {key: value for key, value in ORDER_SCHEMA.items() if key != "$defs"}
MAX_ORDERS = 1000
"""Most orders in one ``order.push`` or ``order.answer``."""

PUSH_SCHEMA: dict[str, Any] = {
    "$defs": ORDER_SCHEMA.get("$defs", {}),
    "type": "object",
    "required": ["orders"],
    "additionalProperties": False,
    "properties": {"orders": {"type": "array", "minItems": 1, "maxItems": MAX_ORDERS,
                              "items": _ORDER}},
}
INTERCEPT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order_id", "reason"],
    "additionalProperties": False,
    "properties": {"order_id": _ID, "reason": _REASON},
}
"""``order.hold`` and ``order.cancel``."""
RELEASE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order_id"],
    "additionalProperties": False,
    "properties": {"order_id": _ID, "reason": _REASON},
}
GET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"order_id": _ID, "code": _ID},
}
"""``order.get``: exactly one of ``order_id`` and ``code`` (checked by the handler, whose
message says so; a ``oneOf`` here would only say "not valid under any of the schemas")."""
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["request_id"],
    "additionalProperties": False,
    "properties": {
        "request_id": {"type": "string", "minLength": 1, "maxLength": 128},
        # Each order is checked by the handler, so a bad one fails the waiting scan with
        # invalid_answer at once instead of leaving it to time out.
        "orders": {"type": "array", "maxItems": MAX_ORDERS, "items": {"type": "object"}},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {"code": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
                           "message": {"type": "string", "maxLength": 1000}},
        },
    },
}
"""``order.answer``: exactly one of ``orders`` and ``error`` (checked by the handler)."""

_ORDER_VALIDATOR = jsonschema.Draft202012Validator(ORDER_SCHEMA)


def parse_orders(raw: list[Any], where: str = "orders") -> list[Order]:
    """Validate orders as the central system sent them.

    Raises:
        CommandError: ``invalid_args``, naming the order (index and id) and the field.
    """
    orders: list[Order] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        name = f"{where}/{index}"
        if isinstance(item, dict) and isinstance(item.get("order_id"), str):
            name += f" (order {item['order_id']})"
        error = jsonschema.exceptions.best_match(_ORDER_VALIDATOR.iter_errors(item))
        if error is not None:
            field = "/".join(str(p) for p in error.absolute_path) or "(the order)"
            raise CommandError(f"{name}: {field}: {error.message}", code="invalid_args")
        try:
            order = Order.model_validate(item)
        except ValidationError as exc:
            raise CommandError(f"{name}: {_describe(exc)}", code="invalid_args") from exc
        if order.order_id in seen:
            raise CommandError(f"{name}: order {order.order_id} is also {where}/"
                               f"{seen[order.order_id]}; send each order once",
                               code="invalid_args")
        seen[order.order_id] = index
        orders.append(order)
    return orders


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = "/".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


def register(commands: CommandChannel, book: OrderBook) -> None:
    """Register the ``order.*`` commands of ``book`` on the command channel."""
    handlers = _Handlers(book)
    commands.register("order.push", handlers.push, args_schema=PUSH_SCHEMA, action=True)
    commands.register("order.hold", handlers.hold, args_schema=INTERCEPT_SCHEMA, action=True)
    commands.register("order.release", handlers.release, args_schema=RELEASE_SCHEMA,
                      action=True)
    commands.register("order.cancel", handlers.cancel, args_schema=INTERCEPT_SCHEMA,
                      action=True)
    commands.register("order.get", handlers.get, args_schema=GET_SCHEMA, local=True)
    commands.register("order.answer", handlers.answer, args_schema=ANSWER_SCHEMA, action=True)


def _exactly_one(args: dict[str, Any], command: str, *keys: str) -> None:
    given = [key for key in keys if key in args]
    if len(given) != 1:
        raise CommandError(f"args of {command}: give exactly one of {' or '.join(keys)} "
                           f"(got {' and '.join(given) or 'neither'})", code="invalid_args")


class _Handlers:
    def __init__(self, book: OrderBook) -> None:
        self.book = book

    async def push(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"orders": await self.book.push(parse_orders(args["orders"]))}

    async def hold(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.book.hold(args["order_id"], args["reason"])

    async def release(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.book.release(args["order_id"], args.get("reason"))

    async def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.book.cancel(args["order_id"], args["reason"])

    async def get(self, args: dict[str, Any]) -> dict[str, Any]:
        _exactly_one(args, "order.get", "order_id", "code")
        if "order_id" in args:
            parcel = await self.book.get(args["order_id"])
            what = f"order {args['order_id']}"
        else:
            parcel = await self.book.find(args["code"])
            what = f"order, waybill or pick code {args['code']}"
        if parcel is None:
            raise OrderError(f"no {what} on this bench: never pushed, or packed or cancelled "
                             f"more than jobs.orders.retention_s = "
                             f"{self.book.config.retention_s} s ago", code="unknown_order")
        return parcel.view()

    async def answer(self, args: dict[str, Any]) -> dict[str, Any]:
        request_id = args["request_id"]
        _exactly_one(args, "order.answer", "orders", "error")
        if "error" in args:
            error = args["error"]
            waiting = self.book.answered(request_id, error=(error["code"], error["message"]))
            return {"request_id": request_id, "waiting": waiting, "orders": []}
        try:
            orders = parse_orders(args["orders"])
        except CommandError as exc:
            self.book.answered(request_id, refused=exc)
            raise
        results = await self.book.push(orders) if orders else []
        waiting = self.book.answered(request_id, order_ids=[o.order_id for o in orders])
        return {"request_id": request_id, "waiting": waiting, "orders": results}
