"""The saga's services by name: what `sagaline worker NAME` and `sagaline up` run."""

from __future__ import annotations

from collections.abc import Callable

from consumers.spec import WorkerSpec
from sagas import inventory, order, payment, tracker
from sagas.config import SERVICES, SagaConfig

SPECS: dict[str, Callable[[SagaConfig], WorkerSpec]] = {
    "order": order.spec,
    "payment": payment.spec,
    "inventory": inventory.spec,
    "tracker": tracker.spec,
}
assert tuple(SPECS) == SERVICES
