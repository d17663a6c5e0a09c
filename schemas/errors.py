"""The one error family `decode` raises. Every one of them is permanent: retrying the same
bytes gives the same answer, so the consumer runtime dead-letters them at once."""

from __future__ import annotations


class DecodeError(Exception):
    """A record that cannot become an `Envelope`. `reason` is a stable machine code."""

    reason = "undecodable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotJson(DecodeError):
    reason = "not_json"


class MissingHeader(DecodeError):
    reason = "missing_header"


class InvalidHeader(DecodeError):
    reason = "invalid_header"


class UnknownMessageType(DecodeError):
    reason = "unknown_type"


class UnsupportedVersion(DecodeError):
    reason = "unsupported_version"


class ContractViolation(DecodeError):
    """Valid JSON that fails the message's schema. `errors` holds (field path, problem)."""

    reason = "validation_failed"

    def __init__(self, message: str, errors: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.errors = errors
