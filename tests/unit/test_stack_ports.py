"""The tests' local stacks bind fixed ports: none may collide with another stack's, and none may lie
in the ephemeral range, where any outgoing connection can be holding it when a server starts."""

from __future__ import annotations

from pathlib import Path

from sagaline.localstack.kafka import nodes_for
from tests.support import SECURE_METRICS_PORTS, STACK_BROKERS, STACK_PORTS

EPHEMERAL_LOW = 32768  # Linux's default net.ipv4.ip_local_port_range starts here


def _ports_of(name: str) -> list[int]:
    kafka_port, postgres_port = STACK_PORTS[name]
    held = [postgres_port]
    for node in nodes_for(Path("/unused"), STACK_BROKERS.get(name, 1), kafka_port):
        held += [node.port, node.controller_port, node.mtls_port]  # mutual TLS only when secure
    return held


def test_no_two_stacks_share_a_port() -> None:
    held = [port for name in STACK_PORTS for port in _ports_of(name)] + list(SECURE_METRICS_PORTS)
    assert len(held) == len(set(held)), sorted(p for p in held if held.count(p) > 1)


def test_every_stack_port_lies_below_the_ephemeral_range() -> None:
    low = EPHEMERAL_LOW
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if range_file.exists():
        low = min(low, int(range_file.read_text().split()[0]))
    held = [port for name in STACK_PORTS for port in _ports_of(name)] + list(SECURE_METRICS_PORTS)
    assert [port for port in held if port >= low] == []
