"""Run inside the payment service's container of compose's secure mode (as its uid, with its
settings) by compose-demo.sh: what the payment service must be refused, each asserted from
the refusing side's own error. Exit 1 if anything is allowed; any other error propagates."""

import asyncio
import sys

from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError

from sagaline.bootstrap import endpoints
from sagaline.settings import Settings

allowed = []
for path, what in (
    ("/secrets/kafka-passwords/order", "order's Kafka password"),
    ("/secrets/pg-passwords/admin", "the PostgreSQL superuser's password"),
):
    try:
        open(path).read()  # noqa: SIM115 - a read that must fail
    except PermissionError as exc:
        print(f"  refused: payment's uid reading {what} ({exc.strerror})")
    else:
        allowed.append(f"payment's uid reading {what}")


async def forge_an_order_event() -> None:
    kafka = (await endpoints(Settings(), start_local=False)).kafka_as("payment")
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait("orders.events", b"forged")
    finally:
        await producer.stop()


try:
    asyncio.run(forge_an_order_event())
except TopicAuthorizationFailedError:
    print("  refused: the payment user producing to orders.events (TopicAuthorizationFailed)")
else:
    allowed.append("the payment user producing to orders.events")
for what in allowed:
    print(f"  NOT refused: {what}", file=sys.stderr)
sys.exit(1 if allowed else 0)
