"""Deployment bundles: one or more ``.bpmn`` files plus the ``forms/*.json`` they use.

A process owner ships a diagram with its forms, as a directory or a zip. Zips are read
defensively (entry count and total size are bounded; paths never touch the disk).
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from engine.bpmn.values import value_problems
from engine.errors import Problem

MAX_ZIP_ENTRIES = 500
MAX_ZIP_BYTES = 20 * 1024 * 1024
# What reading a damaged or unsupported archive raises: a bad CRC or a truncated entry
# (BadZipFile, zlib.error, EOFError), a compression method zipfile lacks
# (NotImplementedError), an encrypted entry (RuntimeError), a header that lies (ValueError,
# OSError). Each is a problem with the upload, reported like any other.
UNREADABLE_ZIP = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OSError)


@dataclass
class Bundle:
    name: str
    bpmn: dict[str, bytes] = field(default_factory=dict)
    forms: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def add_file(self, relative: str, data: bytes) -> None:
        path = PurePosixPath(relative)
        if path.suffix == ".bpmn":
            self.bpmn[relative] = data
        elif path.suffix == ".json" and path.parent.name == "forms":
            self._add_form(relative, path.stem, data)

    def _add_form(self, relative: str, key: str, data: bytes) -> None:
        try:
            schema = json.loads(data)
        except json.JSONDecodeError as exc:
            self.problems.append(Problem(relative, exc.lineno, None, f"form is not JSON: {exc.msg}"))
            return
        except (ValueError, RecursionError) as exc:  # not UTF-8, a number too long, nested too deep
            self.problems.append(Problem(relative, None, None, f"form is not JSON: {exc}"))
            return
        stored = value_problems(schema)
        if stored:
            # A form is stored with its version as JSON: it must be text a database can hold.
            self.problems.extend(Problem(relative, None, None, f"form: {p.field or '(root)'} {p.message}")
                                 for p in stored)
            return
        problem = _schema_problem(data)
        if problem is not None:
            self.problems.append(Problem(relative, None, None, f"form is not a valid JSON Schema: {problem}"))
            return
        self.forms[key] = schema

    def merge(self, other: Bundle) -> None:
        self.bpmn.update(other.bpmn)
        self.forms.update(other.forms)
        self.problems.extend(other.problems)


@lru_cache(maxsize=1024)
def _schema_problem(data: bytes) -> str | None:
    """Why the form is not a JSON Schema, or None. Checked against the meta-schema once per
    distinct content: ``check_schema`` rebuilds its meta-schema validator on every call, about
    15 ms a form, and every deploy of a bundle sends the same forms again."""
    error = best_match(_META_SCHEMA.iter_errors(json.loads(data)))
    return None if error is None else str(error.message)


_META_SCHEMA = Draft202012Validator(Draft202012Validator.META_SCHEMA,
                                    format_checker=Draft202012Validator.FORMAT_CHECKER)


def from_directory(directory: Path) -> Bundle:
    bundle = Bundle(name=directory.name)
    for path in sorted(directory.rglob("*")):
        if path.is_file() and (path.suffix == ".bpmn" or path.parent.name == "forms"):
            bundle.add_file(path.relative_to(directory).as_posix(), path.read_bytes())
    return bundle


def from_zip(data: bytes, name: str) -> Bundle:
    bundle = Bundle(name=name)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except UNREADABLE_ZIP:
        bundle.problems.append(Problem(name, None, None, "not a zip file"))
        return bundle
    entries = [info for info in archive.infolist() if not info.is_dir()]
    if len(entries) > MAX_ZIP_ENTRIES:
        bundle.problems.append(Problem(name, None, None, f"more than {MAX_ZIP_ENTRIES} files"))
        return bundle
    if sum(info.file_size for info in entries) > MAX_ZIP_BYTES:
        bundle.problems.append(Problem(name, None, None,
                                       f"more than {MAX_ZIP_BYTES} bytes uncompressed"))
        return bundle
    for info in entries:
        relative = info.filename.lstrip("/")
        if ".." in PurePosixPath(relative).parts:
            bundle.problems.append(Problem(name, None, None, f"unsafe path {info.filename!r}"))
            continue
        # Bounded read: the declared size may lie in a crafted archive.
        try:
            with archive.open(info) as handle:
                content = handle.read(MAX_ZIP_BYTES + 1)
        except UNREADABLE_ZIP as exc:
            bundle.problems.append(Problem(name, None, None, f"cannot read {info.filename!r}: {exc}"))
            continue
        if len(content) > MAX_ZIP_BYTES:
            bundle.problems.append(Problem(name, None, None, "archive entry too large"))
            return bundle
        bundle.add_file(_strip_top_folder(relative, entries), content)
    return bundle


def _strip_top_folder(relative: str, entries: list[zipfile.ZipInfo]) -> str:
    """Zips made by "compress folder" put everything under one top folder; ignore it."""
    tops = {PurePosixPath(i.filename).parts[0] for i in entries if len(PurePosixPath(i.filename).parts) > 1}
    singles = [i for i in entries if len(PurePosixPath(i.filename).parts) == 1]
    if len(tops) == 1 and not singles:
        return PurePosixPath(*PurePosixPath(relative).parts[1:]).as_posix()
    return relative


def from_paths(paths: list[Path]) -> Bundle:
    """Directories, zips or single ``.bpmn`` files (with ``forms/`` beside them)."""
    bundle = Bundle(name=", ".join(p.name for p in paths))
    for path in paths:
        if path.is_dir():
            bundle.merge(from_directory(path))
        elif path.suffix == ".zip":
            bundle.merge(from_zip(path.read_bytes(), path.name))
        elif path.suffix == ".bpmn" and path.is_file():
            bundle.add_file(path.name, path.read_bytes())
            forms_dir = path.parent / "forms"
            if forms_dir.is_dir():
                for form in sorted(forms_dir.glob("*.json")):
                    bundle.add_file(f"forms/{form.name}", form.read_bytes())
        else:
            bundle.problems.append(Problem(str(path), None, None,
                                           "not a directory, .zip or .bpmn file"))
    return bundle
