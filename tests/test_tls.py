"""TLS to the broker (issue 12, part 4): Celery's ``broker_use_ssl`` and ``amqps://`` mapped to
pika's ``SSLOptions``, checked on the contexts they build (no broker needed).

A throwaway CA and a client certificate signed by it are made with the ``openssl`` CLI in a
temporary directory.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pika
import pytest
from celery import Celery

from tcelery_req_handler import ConfigurationError, Producer
from tcelery_req_handler.transports.amqp import (
    AmqpTransport,
    broker_parameters,
    connection_parameters,
    ssl_options,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA, and a client key and certificate signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=tcelery test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=tcelery client",
             "-keyout", "client.key", "-out", "client.csr", cwd=d)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", "client.pem", cwd=d)
    return {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}


def _ca_subjects(context: ssl.SSLContext) -> list[str]:
    return [dict(pair[0] for pair in cert["subject"]).get("commonName", "")
            for cert in context.get_ca_certs()]


def test_tls_off_by_default() -> None:
    params = connection_parameters("amqp://u:p@rabbit.example//", heartbeat=60,
                                   connect_timeout=5)
    assert params.ssl_options is None and params.port == 5672
    assert ssl_options(False, "h") is None and ssl_options(None, "h") is None


def test_amqps_url_keeps_the_default_context() -> None:
    params = connection_parameters("amqps://u:p@rabbit.example//", heartbeat=60,
                                   connect_timeout=5)
    options = params.ssl_options
    assert isinstance(options, pika.SSLOptions) and params.port == 5671
    assert options.server_hostname == "rabbit.example"
    assert options.context.verify_mode == ssl.CERT_REQUIRED
    assert options.context.check_hostname is True


def test_broker_use_ssl_true_is_the_default_context_on_port_5671() -> None:
    params = connection_parameters("amqp://u:p@rabbit.example//", heartbeat=60,
                                   connect_timeout=5, use_ssl=True)
    options = params.ssl_options
    assert isinstance(options, pika.SSLOptions) and params.port == 5671
    assert options.server_hostname == "rabbit.example"
    assert options.context.verify_mode == ssl.CERT_REQUIRED
    assert options.context.check_hostname is True
    # an explicit port wins
    explicit = connection_parameters("amqp://u:p@rabbit.example:6000//", heartbeat=60,
                                     connect_timeout=5, use_ssl=True)
    assert explicit.port == 6000


def test_dict_with_ca_client_cert_and_required_verification(pki: dict[str, Path]) -> None:
    options = ssl_options({"ca_certs": str(pki["ca"]), "certfile": str(pki["cert"]),
                           "keyfile": str(pki["key"]), "cert_reqs": ssl.CERT_REQUIRED,
                           "server_hostname": "broker.internal"}, "10.0.0.7")
    assert options is not None
    context = options.context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert options.server_hostname == "broker.internal"
    # only our CA is trusted (no system CAs loaded on top of ca_certs)
    assert _ca_subjects(context) == ["tcelery test CA"]


def test_client_cert_chain_is_loaded(pki: dict[str, Path], tmp_path: Path) -> None:
    """A certificate whose key does not match fails at construction, with the file named:
    the chain is really loaded (a wrong path is refused the same way)."""
    ok = ssl_options({"certfile": str(pki["cert"]), "keyfile": str(pki["key"])}, "h")
    assert ok is not None
    other_key = tmp_path / "other.key"
    _openssl("genpkey", "-algorithm", "RSA", "-out", str(other_key), cwd=tmp_path)
    with pytest.raises(ConfigurationError, match="cannot build the TLS context"):
        ssl_options({"certfile": str(pki["cert"]), "keyfile": str(other_key)}, "h")
    with pytest.raises(ConfigurationError, match="cannot build the TLS context"):
        ssl_options({"ca_certs": str(tmp_path / "missing.pem")}, "h")


def test_dict_follows_py_amqp_for_hostname_and_verification(pki: dict[str, Path]) -> None:
    # no server_hostname: chain verified, host name not checked, no SNI (as py-amqp does)
    plain = ssl_options({"ca_certs": str(pki["ca"])}, "rabbit.example")
    assert plain is not None
    assert plain.context.verify_mode == ssl.CERT_REQUIRED
    assert plain.context.check_hostname is False and plain.server_hostname is None
    # server_hostname=None: the URL's host, as kombu fills it in
    filled = ssl_options({"ca_certs": str(pki["ca"]), "server_hostname": None},
                         "rabbit.example")
    assert filled is not None
    assert filled.server_hostname == "rabbit.example" and filled.context.check_hostname
    # CERT_NONE: no verification at all, and no system CAs loaded
    none = ssl_options({"cert_reqs": ssl.CERT_NONE}, "rabbit.example")
    assert none is not None
    assert none.context.verify_mode == ssl.CERT_NONE and not none.context.check_hostname
    assert none.context.get_ca_certs() == []
    optional = ssl_options({"cert_reqs": "CERT_OPTIONAL", "ca_certs": str(pki["ca"])}, "h")
    assert optional is not None and optional.context.verify_mode == ssl.CERT_OPTIONAL
    # without ca_certs and with verification: the system's CAs
    system = ssl_options({"cert_reqs": ssl.CERT_REQUIRED}, "h")
    assert system is not None and system.context.verify_mode == ssl.CERT_REQUIRED


def test_tls_versions_and_ciphers() -> None:
    options = ssl_options({"tls_minimum_version": ssl.TLSVersion.TLSv1_2,
                           "ciphers": "ECDHE+AESGCM"}, "h")
    assert options is not None
    assert options.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert all("GCM" in c["name"] or c["protocol"] == "TLSv1.3"
               for c in options.context.get_ciphers())


def test_an_ssl_context_is_used_as_is() -> None:
    context = ssl.create_default_context()
    options = ssl_options(context, "rabbit.example")
    assert options is not None and options.context is context
    assert options.server_hostname == "rabbit.example"


def test_bad_settings_are_refused_with_a_reason() -> None:
    with pytest.raises(ConfigurationError, match="unsupported key"):
        ssl_options({"keyfil": "/x"}, "h")
    with pytest.raises(ConfigurationError, match="cert_reqs"):
        ssl_options({"cert_reqs": "sometimes"}, "h")
    with pytest.raises(ConfigurationError, match="cannot build the TLS context"):
        ssl_options({"cert_reqs": ssl.CERT_NONE, "server_hostname": "h"}, "h")
    with pytest.raises(ConfigurationError, match="must be True, False, a dict"):
        ssl_options("yes", "h")  # type: ignore[arg-type]


def test_every_failover_node_gets_tls_with_its_own_host(pki: dict[str, Path]) -> None:
    nodes = broker_parameters("amqp://u:p@a.example//;amqp://u:p@b.example:5999//",
                              heartbeat=60, connect_timeout=5,
                              use_ssl={"ca_certs": str(pki["ca"]), "server_hostname": None})
    assert [(n.host, n.port) for n in nodes] == [("a.example", 5671), ("b.example", 5999)]
    assert [n.ssl_options.server_hostname for n in nodes] == ["a.example", "b.example"]


def test_producer_reads_broker_use_ssl_from_the_app(pki: dict[str, Path]) -> None:
    app = Celery("tls", broker="amqp://u:p@rabbit.example//", backend="rpc://",
                 set_as_current=False)
    app.conf.broker_use_ssl = {"ca_certs": str(pki["ca"]), "cert_reqs": ssl.CERT_REQUIRED}
    producer = Producer(app)
    assert isinstance(producer.transport, AmqpTransport)
    params = producer.transport.parameters
    assert params.port == 5671 and params.ssl_options is not None
    assert _ca_subjects(params.ssl_options.context) == ["tcelery test CA"]
