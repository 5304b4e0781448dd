"""Pure parts of the agent's control link: address parsing and the renewal time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.control.client import renewal_time, split_address
from agent.control.identity import build_csr, generate_key
from controlplane.pki import CertificateAuthority


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8701", ("127.0.0.1", 8701)),
        ("cp.example:1", ("cp.example", 1)),
        ("[::1]:443", ("::1", 443)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize(
    "address", ["", "host", ":80", "host:", "host:0", "host:70000", "host:http"]
)
def test_split_address_rejects_bad_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_address(address)


def test_renewal_time_is_two_thirds_into_the_lifetime(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.load_or_create(tmp_path / "ca")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    agent_id = str(uuid.uuid4())
    _, issued = ca.sign_agent_csr(
        build_csr(generate_key(), agent_id),
        expected_agent_id=None,
        valid_for=timedelta(days=30),
        now=now,
    )
    lifetime = issued.not_after - issued.not_before
    assert renewal_time(issued.pem) == issued.not_after - lifetime / 3
    assert issued.not_before < renewal_time(issued.pem) < issued.not_after
