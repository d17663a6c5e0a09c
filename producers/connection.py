"""How to reach Kafka: the connection options every aiokafka client is built from.

The bootstrap builds one `KafkaConnection` from settings and hands it inward; nothing
in the inner packages reads the environment.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed

from producers.errors import Unreachable


@dataclass(frozen=True)
class KafkaConnection:
    """Bootstrap servers plus security options (SASL/SCRAM and TLS, unused by default)."""

    bootstrap_servers: str
    client_id: str = "sagaline"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by AIOKafkaProducer, AIOKafkaConsumer and the admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password=self.ssl_key_password)
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL_"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism or "SCRAM-SHA-512"
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs


async def unreachable(kafka: KafkaConnection, error: Exception) -> Unreachable:
    """Why a client could not bootstrap, in one line: aiokafka only says "Unable to
    bootstrap", so one connection to the first bootstrap server is opened to learn whether
    the broker is down, refused the credentials or presented an untrusted certificate.
    Names the user, never a secret."""
    host, _, port = kafka.bootstrap_servers.split(",")[0].strip().rpartition(":")
    options = {k: v for k, v in kafka.client_kwargs().items() if k != "bootstrap_servers"}
    refused = True
    try:
        conn = await asyncio.wait_for(create_conn(host, int(port), **options), timeout=15)
    except SaslAuthenticationFailed:
        mechanism = kafka.sasl_mechanism or "SCRAM-SHA-512"
        user = kafka.sasl_username
        reason = f"authentication failed for user {user!r} ({mechanism}): wrong password, or no such user"
    except ssl.SSLCertVerificationError as exc:
        reason = f"its TLS certificate is not trusted ({exc.verify_message}); check SAGALINE_KAFKA_SSL_CAFILE"
    except ssl.SSLError as exc:
        reason = f"TLS handshake failed ({exc.reason or exc}); is the listener TLS, and the protocol right?"
    except KafkaConnectionError:
        if not kafka.ssl_certfile:
            refused, reason = False, str(error)
        else:  # TLS 1.3: the broker checks a client certificate after the handshake, then hangs up
            reason = (
                "it closed the connection after the TLS handshake: is the client certificate "
                "(SAGALINE_KAFKA_SSL_CERTFILE) signed by a CA the broker trusts?"
            )
    except (OSError, TimeoutError, KafkaError, ValueError):
        refused, reason = False, str(error)
    else:
        conn.close()
        refused, reason = False, str(error)
    return Unreachable("Kafka", kafka.bootstrap_servers, reason, refused=refused)
