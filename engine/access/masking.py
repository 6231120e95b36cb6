"""Server-side masks for client identifiers (docs/domain.md#masking; the patterns are assumed
defaults, compliance to confirm them against JR/T 0171-2020 Annex A). Nothing unmasked leaves
the engine except through an audited reveal (``engine.client_access.reveal``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _mask(value: str | None, head: int, tail: int) -> str | None:
    if value is None:
        return None
    if len(value) <= head + tail:
        # Too short to show both ends without showing nearly all of it.
        return "*" * len(value)
    return value[:head] + "*" * (len(value) - head - tail) + (value[-tail:] if tail else "")


def mask_id_number(value: str | None) -> str | None:
    """First 4 + last 4: ``3301**********2315``."""
    return _mask(value, 4, 4)


def mask_phone(value: str | None) -> str | None:
    """First 3 + last 4: ``139****0421``."""
    return _mask(value, 3, 4)


def mask_account(value: str | None) -> str | None:
    """Last 4 only: ``**** 5521`` (fund, securities and bank accounts alike)."""
    if value is None:
        return None
    return "****" if len(value) <= 4 else f"**** {value[-4:]}"


MASKERS: dict[str, Callable[[str | None], str | None]] = {
    "id_number": mask_id_number, "phone": mask_phone, "account_number": mask_account,
}

# Case variables named like an identifier (a complaint's ``complainant_phone``, a form's
# ``bank_account_no``): masked wherever case data leaves the engine, like the registry's.
_BY_SUFFIX: tuple[tuple[tuple[str, ...], Callable[[str | None], str | None]], ...] = (
    (("phone", "mobile"), mask_phone),
    (("id_number",), mask_id_number),
    (("account_number", "account_no"), mask_account),
)


def mask_identifiers(value: Any, name: str = "") -> Any:
    """``value`` with every string held under an identifier-like name masked, at any depth
    (variables, form data inside history events, lists of contacts)."""
    if isinstance(value, dict):
        return {k: mask_identifiers(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_identifiers(v, name) for v in value]
    if isinstance(value, str):
        lowered = name.lower()
        for suffixes, mask in _BY_SUFFIX:
            if lowered.endswith(suffixes):
                return mask(value)
    return value
