"""Publishing errors: the caller's fault (nothing sent) vs delivery (retryable)."""

from __future__ import annotations


class PublishError(Exception):
    """Base of publishing errors."""


class PublishValidationError(PublishError):
    """The message does not satisfy its schema; nothing was sent or staged.
    `errors` lists (field path, problem)."""

    def __init__(self, message: str, errors: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.errors = errors


class DeliveryError(PublishError):
    """The broker did not acknowledge the record. Retrying is safe: a retry carries the same
    event id, so consumers drop a duplicate. `outcome_unknown` means it may have been written."""

    def __init__(self, message: str, *, outcome_unknown: bool, record_refused: bool = False) -> None:
        """`record_refused`: this record itself can never be accepted as it is (too large,
        invalid); retrying it is pointless, the others are unaffected."""
        super().__init__(message)
        self.outcome_unknown = outcome_unknown
        self.record_refused = record_refused


class Unreachable(ConnectionError):
    """Kafka or PostgreSQL did not answer, or refused us (`refused`: credentials or TLS):
    says which one and where (never credentials). A ConnectionError, so it is transient
    wherever failures are classified."""

    def __init__(self, service: str, address: str, reason: str, *, refused: bool = False) -> None:
        state = "refused the connection" if refused else "is unreachable"
        super().__init__(f"{service} at {address} {state}: {reason}")
        self.refused = refused
        self.service = service
        self.address = address
