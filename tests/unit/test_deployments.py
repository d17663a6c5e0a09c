"""Two deployments on one cluster and one database (different prefixes) never touch each
other's topics, lanes, groups, schemas or dead letters: naming is pure, so checked here."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from producers.connection import KafkaConnection
from sagaline.bootstrap import dlq_indexer, saga_config
from sagaline.settings import Settings
from sagas.config import SERVICES

A = Settings.from_environ({})
B = Settings.from_environ({"SAGALINE_TOPIC_PREFIX": "b.", "SAGALINE_SAGA_PREFIX": "b_"})
KAFKA = KafkaConnection(bootstrap_servers="127.0.0.1:1")


def _names(settings: Settings) -> set[str]:
    config = saga_config(settings)
    names = {spec.name for spec in config.topics.specs()}
    for service in SERVICES:
        lanes = config.lanes(service)
        names |= {*lanes.retry_topics, lanes.dlt, config.group(service), config.schema(service)}
    return names | {config.schema("dlq")}


def test_every_name_of_one_deployment_differs_from_the_others() -> None:
    assert _names(A).isdisjoint(_names(B))
    assert saga_config(B).lanes("payment").retry_topic(1) == "b.b_payment.retry.1"
    assert saga_config(B).lanes("payment").dlt == "b.b_payment.dlt"


def test_the_dlq_indexer_reads_exactly_its_own_deployments_dead_letters() -> None:
    for mine, theirs in ((A, B), (B, A)):
        pattern = re.compile(dlq_indexer(mine, KAFKA, None).pattern)  # type: ignore[arg-type]
        for service in SERVICES:
            assert pattern.match(saga_config(mine).lanes(service).dlt)
            assert not pattern.match(saga_config(theirs).lanes(service).dlt)
        assert not pattern.match("someone-elses.dlt")
    assert dlq_indexer(B, KAFKA, None).group == "b_sagaline-dlq-index"  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["1abc", "Abc", "a-b", "a b"])
def test_a_saga_prefix_the_database_would_refuse_is_refused_at_startup(prefix: str) -> None:
    with pytest.raises(ValidationError, match="saga_prefix"):
        Settings.from_environ({"SAGALINE_SAGA_PREFIX": prefix})
