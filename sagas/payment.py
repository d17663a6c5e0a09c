"""The payment service: charges on OrderPlaced, refunds on StockRejected or cancellation.

One `payments` row per order makes "at most one charge and at most one refund" structural:
the row is created by the charge (or by a cancellation that came first, which voids it) and
a refund only moves it from `charged` to `refunded`. A decline is a business outcome.

Per batch, in the unit of work's transaction (its orders' locks already held): load the
batch's payment rows and lock the accounts they touch, in customer order (so concurrent
batches never deadlock), in two statements; `decide` the whole batch in plain Python; save
the changed payments and balances in one statement each. The rules live in `decide`, which
is pure — tests shuffle deliveries through it without a database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import asyncpg
from prometheus_client import CollectorRegistry

from consumers.handlers import HandlerContext, Handlers
from consumers.spec import WorkerSpec
from producers import failpoints
from producers.db import DbConnection, qualified
from sagas.config import SagaConfig
from schemas import messages as m
from schemas.values import Money, StockLine

PaymentStatus = Literal["charged", "declined", "voided", "refunded"]
Inbound = m.OrderPlaced | m.StockRejected | m.OrderCancelling


def payment_id(order_id: str) -> str:
    """Deterministic: the same order always names the same payment."""
    return f"{order_id}:charge"


@dataclass(frozen=True)
class Payment:
    """A `payments` row."""

    order_id: str
    status: PaymentStatus
    customer_id: str
    currency: str
    amount_minor: int
    charged_minor: int = 0
    refunded_minor: int = 0
    reason: str | None = None


@dataclass(frozen=True)
class Account:
    customer_id: str
    currency: str
    balance_minor: int


@dataclass
class Decisions:
    """What a batch changes: payments and accounts by key (their final state), and per
    message (in order) the events it emits."""

    payments: dict[str, Payment] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    events: list[list[m.Message]] = field(default_factory=list)


def decide(
    payments: dict[str, Payment], accounts: dict[str, Account], messages: Sequence[Inbound]
) -> Decisions:
    """Apply `messages` in order to the loaded state. Each order is answered once
    (PaymentCompleted or PaymentFailed), charged at most once and refunded at most once; a
    cancellation that comes before the charge voids the payment, and the charge then
    declines. A balance never goes below zero."""
    state, balances = dict(payments), dict(accounts)
    out = Decisions()
    for message in messages:
        events: list[m.Message] = []
        if isinstance(message, m.OrderPlaced):
            events = _charge(state, balances, out, message)
        else:
            reason = (
                f"out of stock: {message.reason}"[:500]
                if isinstance(message, m.StockRejected)
                else f"order cancelled: {message.reason}"
            )
            events = _refund(state, balances, out, message.order_id, reason)
        out.events.append(events)
    return out


def _charge(
    state: dict[str, Payment], balances: dict[str, Account], out: Decisions, placed: m.OrderPlaced
) -> list[m.Message]:
    existing = state.get(placed.order_id)
    amount = placed.total.amount_minor
    declined = Payment(placed.order_id, "declined", placed.customer_id, placed.total.currency, amount)
    if existing is not None and existing.status == "voided":
        # The cancellation overtook this order (a retry lane or a dead letter delayed it):
        # never charge, but answer, so the order learns how its payment ended.
        reason = "order cancelled before payment"
        _put(state, out, replace(declined, reason=existing.reason))
        return [_failed(placed, reason)]
    if existing is not None:
        return []  # already charged or declined: at most one charge per order
    account = balances.get(placed.customer_id)
    if account is None or account.currency != placed.total.currency or account.balance_minor < amount:
        reason = (
            "unknown customer account"
            if account is None
            else "currency mismatch"
            if account.currency != placed.total.currency
            else "insufficient funds"
        )
        _put(state, out, replace(declined, reason=reason))
        return [_failed(placed, reason)]
    debit = 2 * amount if failpoints.enabled("payment.debit-twice") else amount  # a negative control's defect
    balances[account.customer_id] = out.accounts[account.customer_id] = replace(
        account, balance_minor=account.balance_minor - debit
    )
    _put(state, out, replace(declined, status="charged", charged_minor=amount))
    lines = [StockLine(sku=i.sku, quantity=i.quantity) for i in placed.items]
    return [
        m.PaymentCompleted(
            order_id=placed.order_id,
            payment_id=payment_id(placed.order_id),
            customer_id=placed.customer_id,
            amount=placed.total,
            lines=lines,
        )
    ]


def _refund(
    state: dict[str, Payment], balances: dict[str, Account], out: Decisions, order_id: str, reason: str
) -> list[m.Message]:
    """Refund a charged order once; void an order not charged yet (a charge never follows)."""
    existing = state.get(order_id)
    if existing is None:
        _put(state, out, Payment(order_id, "voided", "", "", 0, reason=reason))
        return []
    if existing.status != "charged":
        return []  # declined, voided or refunded already: at most one refund per order
    amount = existing.charged_minor
    _put(state, out, replace(existing, status="refunded", refunded_minor=amount, reason=reason))
    account = balances.get(existing.customer_id)
    if account is not None:  # the account it was charged to; accounts are never deleted
        balances[account.customer_id] = out.accounts[account.customer_id] = replace(
            account, balance_minor=account.balance_minor + amount
        )
    return [
        m.PaymentRefunded(
            order_id=order_id,
            payment_id=payment_id(order_id),
            amount=Money(amount_minor=amount, currency=existing.currency),
            reason=reason,
        )
    ]


def _put(state: dict[str, Payment], out: Decisions, payment: Payment) -> None:
    state[payment.order_id] = out.payments[payment.order_id] = payment


def _failed(placed: m.OrderPlaced, reason: str) -> m.PaymentFailed:
    return m.PaymentFailed(
        order_id=placed.order_id, customer_id=placed.customer_id, amount=placed.total, reason=reason
    )


# --- the batch handler: load, decide, save --------------------------------------------------

_PAYMENT_COLUMNS = (
    "order_id, status, customer_id, currency, amount_minor, charged_minor, refunded_minor, reason"
)


async def apply(contexts: list[HandlerContext]) -> None:
    conn, schema = contexts[0].conn, contexts[0].schema
    messages: list[Inbound] = [ctx.envelope.data for ctx in contexts]  # type: ignore[misc]
    order_ids = sorted({msg.order_id for msg in messages})
    paying = sorted({msg.customer_id for msg in messages if isinstance(msg, m.OrderPlaced)})
    payments, accounts = await _load(conn, schema, order_ids, paying)
    decisions = decide(payments, accounts, messages)
    _save(contexts[0], decisions)
    for ctx, events in zip(contexts, decisions.events, strict=True):
        for event in events:
            await ctx.emit(event)


async def _load(
    conn: DbConnection, schema: str, order_ids: list[str], paying: list[str]
) -> tuple[dict[str, Payment], dict[str, Account]]:
    """The orders' payments, and the accounts the batch can touch (the new orders'
    customers and those of charged payments a cancellation may refund) locked in customer
    order — the rows are locked as the sorted scan returns them, so every batch takes them
    in one global order; the accounts' keys are gathered into one array first, so the
    lookup is an index scan however large the table (an OR of the two sets was a scan of
    every account). A batch with new orders locks accounts anyway: one round trip
    (the payments are stable under their orders' locks, which the unit of work holds, and
    an account locked after a wait is read as last committed). Without, the accounts are
    read only if a charged payment may be refunded: such a batch never touches them."""
    if not paying:
        known = await _load_payments(conn, schema, order_ids)
        charged = sorted({p.customer_id for p in known.values() if p.status == "charged"})
        return known, await _lock_accounts(conn, schema, charged) if charged else {}
    rows = await conn.fetch(
        f"WITH p AS MATERIALIZED (SELECT {_PAYMENT_COLUMNS} FROM {qualified(schema, 'payments')}"
        "   WHERE order_id = ANY($1::text[])),"
        " a AS MATERIALIZED (SELECT customer_id, currency, balance_minor"
        f"   FROM {qualified(schema, 'accounts')} WHERE customer_id = ANY(ARRAY(SELECT unnest($2::text[])"
        "   UNION SELECT customer_id FROM p WHERE status = 'charged')) ORDER BY customer_id FOR UPDATE)"
        f" SELECT {_PAYMENT_COLUMNS}, NULL::bigint AS balance_minor FROM p"
        " UNION ALL SELECT NULL, NULL, customer_id, currency, NULL, NULL, NULL, NULL, balance_minor FROM a",
        order_ids,
        paying,
    )
    payments: dict[str, Payment] = {}
    accounts: dict[str, Account] = {}
    for row in rows:
        if row["order_id"] is None:
            accounts[row["customer_id"]] = Account(row["customer_id"], row["currency"], row["balance_minor"])
        else:
            payment = Payment(**{k: v for k, v in row.items() if k != "balance_minor"})
            payments[payment.order_id] = payment
    return payments, accounts


async def _load_payments(conn: DbConnection, schema: str, order_ids: list[str]) -> dict[str, Payment]:
    rows = await conn.fetch(
        f"SELECT {_PAYMENT_COLUMNS} FROM {qualified(schema, 'payments')} WHERE order_id = ANY($1::text[])",
        order_ids,
    )
    return {row["order_id"]: Payment(**dict(row)) for row in rows}


async def _lock_accounts(conn: DbConnection, schema: str, customers: list[str]) -> dict[str, Account]:
    rows = await conn.fetch(
        f"SELECT customer_id, currency, balance_minor FROM {qualified(schema, 'accounts')}"
        " WHERE customer_id = ANY($1::text[]) ORDER BY customer_id FOR UPDATE",
        customers,
    )
    return {row["customer_id"]: Account(**dict(row)) for row in rows}


def _save(ctx: HandlerContext, decisions: Decisions) -> None:
    """Queue the changed rows' statements: they go with the outbox rows (HandlerContext.defer)."""
    schema = ctx.schema
    if decisions.payments:
        rows = list(decisions.payments.values())
        ctx.defer(
            f"INSERT INTO {qualified(schema, 'payments')} AS p"
            f" (payment_id, {_PAYMENT_COLUMNS})"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],"
            " $7::bigint[], $8::bigint[], $9::text[])"
            " ON CONFLICT (order_id) DO UPDATE SET payment_id = EXCLUDED.payment_id,"
            " status = EXCLUDED.status, customer_id = EXCLUDED.customer_id, currency = EXCLUDED.currency,"
            " amount_minor = EXCLUDED.amount_minor, charged_minor = EXCLUDED.charged_minor,"
            " refunded_minor = EXCLUDED.refunded_minor, reason = EXCLUDED.reason,"
            " updated_at = clock_timestamp()",
            [payment_id(p.order_id) if p.status in ("charged", "refunded") else None for p in rows],
            *_columns(rows, _PAYMENT_COLUMNS),
        )
    if decisions.accounts:
        accounts = list(decisions.accounts.values())
        ctx.defer(
            f"UPDATE {qualified(schema, 'accounts')} AS a SET balance_minor = v.balance"
            " FROM unnest($1::text[], $2::bigint[]) AS v(customer_id, balance)"
            " WHERE a.customer_id = v.customer_id",
            [a.customer_id for a in accounts],
            [a.balance_minor for a in accounts],
        )


def _columns(rows: list[Payment], names: str) -> list[list[Any]]:
    return [[getattr(row, name.strip()) for row in rows] for name in names.split(",")]


def build_handlers(pool: asyncpg.Pool[Any], registry: CollectorRegistry) -> Handlers:
    handlers = Handlers()
    handlers.register_batch((m.OrderPlaced, m.StockRejected, m.OrderCancelling), apply)
    return handlers


def spec(config: SagaConfig) -> WorkerSpec:
    return config.worker_spec(
        "payment",
        subscribe=(config.topics.orders, config.topics.inventory),
        build_handlers=build_handlers,
    )
