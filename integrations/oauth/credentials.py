"""The app credentials an admin pastes: a certificate with its key (Microsoft), a service
account key (Google). Read here, so that the form's validation and the token requests agree
on what is accepted."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


@dataclass(frozen=True)
class CertificateCredential:
    private_key_pem: str
    certificate_pem: str


def parse_certificate_credential(text: str) -> CertificateCredential:
    """The private key and the certificate from one pasted PEM text (in any order)."""
    keys, certificates = [], []
    for match in _PEM_BLOCK.finditer(text):
        kind = match.group(1)
        if kind == "CERTIFICATE":
            certificates.append(match.group(0))
        elif kind.endswith("PRIVATE KEY"):
            keys.append(match.group(0))
    if not keys or not certificates:
        raise ValueError(
            "Paste both the certificate (-----BEGIN CERTIFICATE-----) and its private key "
            "(-----BEGIN PRIVATE KEY-----), PEM, without a password."
        )
    try:
        load_pem_private_key(keys[0].encode(), password=None)
        x509.load_pem_x509_certificate(certificates[0].encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"The certificate or its private key cannot be read ({exc}). Paste them PEM, and "
            "the key without a password."
        ) from exc
    return CertificateCredential(private_key_pem=keys[0], certificate_pem=certificates[0])


def certificate_problem(text: str) -> str:
    try:
        parse_certificate_credential(text)
    except ValueError as exc:
        return str(exc)
    return ""


SERVICE_ACCOUNT_KEYS = ("client_email", "private_key", "token_uri")


def parse_service_account_key(text: str) -> dict[str, str]:
    """The JSON key file of a Google service account, as Google Cloud console downloads it."""
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"This is not the JSON key of a service account ({exc.msg}): paste the whole file "
            "that Google Cloud console downloaded."
        ) from exc
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError(
            'This JSON is not a service account key (its "type" must be "service_account").'
        )
    missing = [key for key in SERVICE_ACCOUNT_KEYS if not info.get(key)]
    if missing:
        raise ValueError(f"The service account key lacks {', '.join(missing)}.")
    try:
        load_pem_private_key(info["private_key"].encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"The private key in the service account key cannot be read: {exc}."
        ) from exc
    return info


def service_account_key_problem(text: str) -> str:
    try:
        parse_service_account_key(text)
    except ValueError as exc:
        return str(exc)
    return ""
