"""The names of the built-in sensitive-data recognizers a policy document may use."""

from __future__ import annotations

# Each is implemented in common.policy.detectors; a policy names them under `builtin:`.
BUILTIN_DETECTOR_KINDS: tuple[str, ...] = (
    "payment_card",  # 12-19 digits passing the Luhn check, spaces/dashes/dots allowed inside
    "iban",  # country code, check digits, BBAN; ISO 13616 mod-97 == 1
    "us_ssn",  # AAA-GG-SSSS without the never-issued ranges (000, 666, 9xx; 00; 0000)
    "email",
    "phone_number",  # international (+CC ...) and North American forms
    "ip_address",  # IPv4 and IPv6
    "private_key",  # PEM/OpenSSH private key blocks
    "cloud_access_key",  # AWS access key ids, GCP service-account keys, Azure storage keys
    "secret",  # credentials in assignments (password=..., token: ...) and known token formats
)
