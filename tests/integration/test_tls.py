"""TLS between workers and the coordinator: a self-signed certificate made on first run and
pinned by workers on first join, a CA-issued one, a changed one refused, and HTTPS."""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
import ssl
import stat
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarm.client.trust import PINS_FILE, CoordinatorTrust
from swarm.coordinator.demo import start_client, start_coordinator, stop_process
from swarm.protocol import messages as m
from swarm.protocol import tls
from swarm.protocol.errors import CertificateMismatchError, ConfigError, TransportError
from swarm.protocol.service import WorkerClient, open_channel
from tests.conftest import LiveCoordinator, signed_registration, start_live_coordinator

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_coordinator(tmp_path: Path) -> Iterator[LiveCoordinator]:
    live = start_live_coordinator(tmp_path / "coordinator", tls=True)
    try:
        yield live
    finally:
        live.services.stop()


def register_through(trust: CoordinatorTrust, target: str) -> m.RegisterWorkerResponse:
    credentials, options = trust.credentials(target)
    with open_channel(target, credentials=credentials, options=options) as channel:
        return WorkerClient(channel).register_worker(signed_registration())


def test_a_worker_pins_the_self_signed_certificate_on_first_contact(
    tls_coordinator: LiveCoordinator, tmp_path: Path
) -> None:
    certificate = tls_coordinator.services.certificate
    assert certificate is not None
    pins = tmp_path / "client" / PINS_FILE
    trust = CoordinatorTrust(pins)
    assert register_through(trust, tls_coordinator.target).session.worker_id
    pinned = json.loads(pins.read_text())[tls_coordinator.target]
    assert pinned["fingerprint"] == certificate.fingerprint
    # The same client again, and a client told the fingerprint up front: both trust it.
    assert register_through(CoordinatorTrust(pins), tls_coordinator.target).session.worker_id
    told = CoordinatorTrust(tmp_path / "other.json", fingerprints=(certificate.fingerprint,))
    assert register_through(told, tls_coordinator.target).session.worker_id
    # A plaintext client cannot talk to a TLS coordinator.
    with (
        open_channel(tls_coordinator.target) as channel,
        pytest.raises(TransportError),
    ):
        WorkerClient(channel).register_worker(signed_registration(), timeout_s=3.0)


def test_a_changed_certificate_is_refused_with_what_to_do(
    tls_coordinator: LiveCoordinator, tmp_path: Path
) -> None:
    pins = tmp_path / PINS_FILE
    other = "SHA256:" + "ab" * 32
    pins.write_text(json.dumps({tls_coordinator.target: {"fingerprint": other, "pinned_at": 0}}))
    with pytest.raises(CertificateMismatchError, match="pinned") as caught:
        CoordinatorTrust(pins).credentials(tls_coordinator.target)
    assert str(pins) in str(caught.value)  # says which file to edit if the change is genuine
    with pytest.raises(CertificateMismatchError, match="--coordinator-fingerprint"):
        CoordinatorTrust(tmp_path / "x.json", fingerprints=(other,)).credentials(
            tls_coordinator.target
        )


def test_the_self_signed_certificate_is_kept_and_its_key_private(tmp_path: Path) -> None:
    first = tls.self_signed(tmp_path / "tls")
    again = tls.self_signed(tmp_path / "tls")
    assert first.fingerprint == again.fingerprint
    assert stat.S_IMODE((tmp_path / "tls" / "coordinator.key").stat().st_mode) == 0o600
    assert tls.certificate_names(first.der)[0] == tls.SELF_SIGNED_NAME
    assert tls.normalize_fingerprint(first.fingerprint.upper().replace("SHA256:", "")) == (
        first.fingerprint
    )


def test_a_pinning_client_says_when_the_coordinator_speaks_no_tls(
    live_coordinator: LiveCoordinator, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="--insecure"):
        CoordinatorTrust(tmp_path / PINS_FILE).credentials(live_coordinator.target)
    insecure = CoordinatorTrust(tmp_path / PINS_FILE, insecure=True)
    assert register_through(insecure, live_coordinator.target).session.worker_id
    # Where a certificate is pinned, a plaintext answer is a possible impersonation, and the
    # client is not told to drop TLS.
    pins = tmp_path / "pinned.json"
    pinned = {"fingerprint": "SHA256:" + "cd" * 32, "pinned_at": 0}
    pins.write_text(json.dumps({live_coordinator.target: pinned}))
    with pytest.raises(CertificateMismatchError, match="without TLS") as caught:
        CoordinatorTrust(pins).credentials(live_coordinator.target)
    assert "--insecure" not in str(caught.value)


def _ca_and_leaf(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it issued for localhost and 127.0.0.1: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_a_ca_issued_certificate_is_verified_against_the_ca(tmp_path: Path) -> None:
    ca, leaf, key = _ca_and_leaf(tmp_path / "pki")
    # Served as a chain (its own certificate, then the CA's): the first is the one pinned.
    cert = tmp_path / "pki" / "chain.pem"
    cert.write_bytes(leaf.read_bytes() + ca.read_bytes())
    leaf_der = ssl.PEM_cert_to_DER_cert(leaf.read_text())
    assert tls.load(cert, key).fingerprint == tls.fingerprint(leaf_der)
    live = start_live_coordinator(tmp_path / "coordinator", tls=True, tls_cert=cert, tls_key=key)
    try:
        trust = CoordinatorTrust(tmp_path / PINS_FILE, ca_file=ca)
        assert register_through(trust, live.target).session.worker_id
        # Another CA's bundle does not vouch for it.
        other_ca, _, _ = _ca_and_leaf(tmp_path / "other")
        untrusted = CoordinatorTrust(tmp_path / PINS_FILE, ca_file=other_ca)
        with pytest.raises(TransportError):
            credentials, options = untrusted.credentials(live.target)
            with open_channel(live.target, credentials=credentials, options=options) as channel:
                WorkerClient(channel).register_worker(signed_registration(), timeout_s=3.0)
    finally:
        live.services.stop()


def test_processes_pin_on_first_join_and_clients_refuse_a_new_certificate(
    tmp_path: Path,
) -> None:
    with ExitStack() as stack:
        log = stack.enter_context((tmp_path / "coordinator.log").open("w"))
        coordinator, ready = start_coordinator(
            tmp_path / "coordinator", log, extra_env={"SWARM_HTTP_TLS": "true"}
        )
        stack.callback(stop_process, coordinator, signal.SIGTERM)
        target = f"127.0.0.1:{ready['grpc_port']}"
        # The HTTP API is served over TLS too, with the same certificate.
        cert = tmp_path / "coordinator" / "tls" / "coordinator.crt"
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # issued to swarm-coordinator, dialled as 127.0.0.1
        with httpx.Client(
            base_url=f"https://127.0.0.1:{ready['http_port']}", verify=context
        ) as http:
            assert http.get("/v1/swarm/workers").status_code == 200
            client_log = stack.enter_context((tmp_path / "client.log").open("w"))
            client = start_client(target, "pinning", tmp_path / "client", client_log)
            deadline = time.monotonic() + 60
            while not http.get("/v1/swarm/workers").json()["data"]:
                assert time.monotonic() < deadline, (tmp_path / "client.log").read_text()
                time.sleep(0.2)
        pins = json.loads((tmp_path / "client" / PINS_FILE).read_text())
        assert pins[target]["fingerprint"] == ready["tls_fingerprint"]
        assert ready["tls_fingerprint"] in (tmp_path / "coordinator.log").read_text()
        # A client told both the current and the next certificate (an announced rotation).
        new = tls.self_signed(tmp_path / "next")
        log4 = stack.enter_context((tmp_path / "rotating.log").open("w"))
        rotating = start_client(
            target,
            "rotating",
            tmp_path / "rotating",
            log4,
            extra_env={
                "SWARM_COORDINATOR_FINGERPRINT": f"{ready['tls_fingerprint']},{new.fingerprint}"
            },
        )
        stack.callback(stop_process, rotating)
        deadline = time.monotonic() + 60
        while "registered with" not in (tmp_path / "rotating.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "rotating.log").read_text()
            time.sleep(0.2)
        # The coordinator is replaced by one with another certificate at the same address.
        stop_process(coordinator, signal.SIGTERM)
        for name in ("coordinator.crt", "coordinator.key"):
            (tmp_path / "coordinator" / "tls" / name).write_bytes(
                (tmp_path / "next" / name).read_bytes()
            )
        log2 = stack.enter_context((tmp_path / "coordinator2.log").open("w"))
        replaced, ready2 = start_coordinator(
            tmp_path / "coordinator", log2, grpc_port=ready["grpc_port"]
        )
        stack.callback(stop_process, replaced, signal.SIGTERM)
        assert ready2["tls_fingerprint"] == new.fingerprint != ready["tls_fingerprint"]
        # The running client notices once its calls fail, and stops rather than retry forever.
        assert client.wait(timeout=90) == 2
        assert "pinned" in (tmp_path / "client.log").read_text()
        log3 = stack.enter_context((tmp_path / "client2.log").open("w"))
        restarted = start_client(target, "pinning", tmp_path / "client", log3)
        assert restarted.wait(timeout=60) == 2
        refusal = (tmp_path / "client2.log").read_text()
        assert "pinned" in refusal and ready["tls_fingerprint"] in refusal, refusal
        # The client that was told of the rotation reconnects and carries on.
        deadline = time.monotonic() + 90
        while "new certificate this client trusts" not in (tmp_path / "rotating.log").read_text():
            assert rotating.poll() is None, (tmp_path / "rotating.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "rotating.log").read_text()
            time.sleep(0.5)
        assert rotating.poll() is None
        assert stop_process(rotating) == 0
