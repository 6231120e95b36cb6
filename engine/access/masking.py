"""Server-side masks for client identifiers (docs/domain.md#masking; the patterns are assumed
defaults, compliance to confirm them against JR/T 0171-2020 Annex A). Nothing unmasked leaves
the engine except through an audited reveal (``engine.client_access.reveal``).

Case data is masked twice over, because neither check alone is enough:

- by name: a value held under a name that says what it is (``complainant_phone``,
  ``idNumber``, ``bank_card``, ``backup_phone: [...]``) is masked whatever it looks like,
  a number as well as a string;
- by value: anything that looks like an identifier (a mainland mobile or landline number, an
  18-digit ID number whose check digit is right, a bank card number that passes the Luhn
  check, a 12-digit fund account) is masked wherever it is, free text included
  (``summary: "客户电话13761547720…"``) and whatever the field is called (a full number typed
  into ``dialled_number_masked``).

Ordinary values survive: dates, times, amounts, case numbers (``CMP-20261207-0001``), ids of
tasks and cases have no run of digits long enough to be an identifier.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
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


Masker = Callable[[str | None], str | None]

MASKERS: dict[str, Masker] = {
    "id_number": mask_id_number, "phone": mask_phone, "account_number": mask_account,
}

# -- by name ----------------------------------------------------------------------------------
# A name is read as its words (``complainantPhone``, ``complainant-phone`` and
# ``complainant_phone`` alike); it names an identifier when its last words are one of these.
# A trailing ``masked`` is ignored: a field meant to hold a masked value is masked again, which
# leaves a masked value as it was and masks a full one typed into it.
_PHONE_WORDS = {("phone",), ("mobile",), ("tel",), ("telephone",), ("cellphone",), ("phonenumber",),
                ("mobileno",), ("telno",), ("contact", "number")}
_ID_WORDS = {("id", "card"), ("idcard",), ("idno",), ("idnumber",), ("passport",)}
_ACCOUNT_WORDS = {("bank", "card"), ("bankcard",), ("cardno",), ("bank", "account"), ("fund", "account"),
                  ("capital", "account"), ("securities", "account"), ("stock", "account"),
                  ("shareholder", "account"), ("accountno",), ("accountnumber",)}
_NUMBER_WORDS = ("number", "no", "num")
for _word in ("phone", "mobile", "tel", "telephone", "cellphone"):
    _PHONE_WORDS |= {(_word, n) for n in _NUMBER_WORDS}
for _word in ("id", "cert", "certificate", "identity", "passport", "id_card"):
    _ID_WORDS |= {(*_word.split("_"), n) for n in _NUMBER_WORDS}
for _word in ("account", "card"):
    _ACCOUNT_WORDS |= {(_word, n) for n in _NUMBER_WORDS}
_BY_WORDS: tuple[tuple[frozenset[tuple[str, ...]], Masker], ...] = (
    (frozenset(_PHONE_WORDS), mask_phone),
    (frozenset(_ID_WORDS), mask_id_number),
    (frozenset(_ACCOUNT_WORDS), mask_account),
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NOT_WORD = re.compile(r"[^0-9a-z]+")


def _words(name: str) -> tuple[str, ...]:
    words = tuple(w for w in _NOT_WORD.split(_CAMEL.sub("_", name).lower()) if w)
    return words[:-1] if words[-1:] == ("masked",) else words


def masker_for(name: str) -> Masker | None:
    """The mask for values held under ``name``, or None when the name names no identifier."""
    words = _words(name)
    for known, mask in _BY_WORDS:
        if any(words[-len(k):] == k for k in known if len(k) <= len(words)):
            return mask
    return None


# -- by value ---------------------------------------------------------------------------------
# A candidate is never part of a longer run of digits, nor the whole or the fraction of a
# decimal number, so an identifier is not found inside a longer number (nor a number inside a
# case number, a date, a time or an amount written as text).
_L, _R = r"(?<!\d)(?<!\d\.)", r"(?!\d)(?!\.\d)"
_MOBILE = re.compile(rf"{_L}(\+?86[- ]?)?(1[3-9]\d(?:[- ]?\d{{4}}){{2}}){_R}")
_LANDLINE = re.compile(rf"{_L}(\(0\d{{2,3}}\) ?\d{{7,8}}|0\d{{2,3}}[- ]\d{{7,8}}|0\d{{9,11}}){_R}")
_ID_NUMBER = re.compile(rf"{_L}\d{{17}}[\dXx](?![Xx]){_R}")
_CARD = re.compile(rf"{_L}\d{{4}}(?:[- ]?\d{{4}}){{3}}(?:[- ]?\d{{1,3}})?{_R}")
_FUND_ACCOUNT = re.compile(rf"{_L}\d{{12}}{_R}")  # the registry's format (assumed default)
_UUID = re.compile(r"([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})")
_CANDIDATE = re.compile(r"\d{4}")  # every identifier has a run of four digits: the cheap test
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_SMALLEST_MASKED_INT = 10**9  # an integer below this has too few digits to be an identifier


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _is_id_number(value: str) -> bool:
    """GB 11643: 6 digits of region, the birth date, 3 of sequence and a check character, the
    checksum of the first 17 digits. A number with a wrong check character but a real birth
    date in place is taken as one too: one mistyped digit is no reason to show the other 17."""
    total = sum(int(d) * w for d, w in zip(value[:17], _ID_WEIGHTS, strict=True))
    if "10X98765432"[total % 11] == value[17].upper():
        return True
    try:
        born = datetime.strptime(value[6:14], "%Y%m%d")  # noqa: DTZ007 - only whether it is a date
    except ValueError:
        return False
    return 1900 <= born.year <= 2100


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char) * (2 if index % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


def _sub_id(match: re.Match[str]) -> str:
    text = match.group(0)
    return text[:4] + "*" * 10 + text[-4:] if _is_id_number(text) else text


def _sub_card(match: re.Match[str]) -> str:
    # 16 to 19 digits in one run are never a date, an amount or a case number; written in
    # groups they must also pass the Luhn check every bank card number passes.
    text = match.group(0)
    digits = _digits(text)
    return f"**** {digits[-4:]}" if digits == text or _luhn_ok(digits) else text


def _sub_mobile(match: re.Match[str]) -> str:
    return (match.group(1) or "") + _masked_phone(_digits(match.group(2)))


def _sub_landline(match: re.Match[str]) -> str:
    return _masked_phone(_digits(match.group(0)))


def _sub_fund(match: re.Match[str]) -> str:
    # Twelve digits alone are taken for a fund account even when they could be read as a
    # compact time (``200110030417``, the demo's C03, is also 2001-10-03 04:17): times are
    # written with separators everywhere in the product, accounts never are.
    return f"**** {match.group(0)[-4:]}"


def _masked_phone(digits: str) -> str:
    return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


# In this order: a masked identifier has no run of digits left for a later pattern to find.
_BY_VALUE: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (_ID_NUMBER, _sub_id), (_CARD, _sub_card), (_MOBILE, _sub_mobile), (_LANDLINE, _sub_landline),
    (_FUND_ACCOUNT, _sub_fund),
)


def mask_text(text: str) -> str:
    """``text`` with every identifier in it masked (free text, a message echoing a value)."""
    if not _CANDIDATE.search(text):
        return text
    # A UUID (a task's, a recording's) may hold a run of digits that reads as a number: it is
    # left as it is, and the text around it is masked.
    parts = _UUID.split(text)
    for index in range(0, len(parts), 2):
        for pattern, sub in _BY_VALUE:
            parts[index] = pattern.sub(sub, parts[index])
    return "".join(parts)


def _as_text(value: int | float) -> str:
    return str(int(value)) if isinstance(value, int) or value.is_integer() else str(value)


def mask_identifiers(value: Any, name: str = "") -> Any:
    """``value`` as it may be shown: every identifier masked, by name and by value, at any
    depth (variables, form data and messages inside history events, lists of contacts).

    A number held under an identifier's name, or an integer that reads as one, comes back as
    its masked text: a mask is not a number. A float under any other name is an amount and
    is left alone."""
    mask = masker_for(name) if name else None
    if isinstance(value, dict):
        # Keys are masked too (a contact list keyed by phone number); two keys that mask alike
        # would collide, and the later one wins, which shows less rather than more.
        return {mask_text(k) if isinstance(k, str) else k: mask_identifiers(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_identifiers(v, name) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return mask(value) if mask is not None else mask_text(value)
    if isinstance(value, (int, float)):
        if mask is not None:
            return mask(_as_text(value))
        if isinstance(value, int) and abs(value) >= _SMALLEST_MASKED_INT:
            text = str(value)
            masked = mask_text(text)
            return value if masked == text else masked
    return value


def mask_echo(message: str, value: Any, name: str = "") -> str:
    """A validation message that may quote the value it refused (jsonschema writes
    ``'13761547720' is too long``): the quoted value masked as the field's own value would be,
    and anything else in the message that reads as an identifier."""
    masked = mask_identifiers(value, name)
    if masked != value:
        message = message.replace(repr(value), repr(masked))
    return mask_text(message)
