"""Each member's workspace: the documents the dashboard's interview pages keep for them in `meta`
(api.models.Workspace), one per kind. Keyword-only functions in the services/selectors style:

- `workspace_get` never fails for a kind never written: it answers an empty document at version 0;
- `workspace_save` replaces the document. With `version` (the one the client read) it refuses, as a
  409 naming `version`, to overwrite a change the client has not seen (two tabs, two devices);
  without it, it overwrites whatever is there.

The document is a JSON object of at most MAX_BYTES (its compact UTF-8 encoding). A NUL character
cannot be stored in PostgreSQL's jsonb, so one anywhere in it (a key or a string) is refused as a
400 naming where it is, not left to fail in the database.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from api.gateway.errors import Conflict
from api.gateway.rbac import Forbidden
from api.models import Account, Workspace
from api.routing.db import META

KINDS = Workspace.KINDS
MAX_BYTES = 32 * 1024


@dataclass(frozen=True)
class Document:
    kind: str
    data: dict
    version: int
    updated_at: datetime | None


def problems(data) -> list[tuple[str, str]]:
    """Pure: what is wrong with a document, as (field path, detail); empty when it can be stored."""
    if not isinstance(data, dict):
        return [("data", "Must be a JSON object.")]
    size = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_BYTES:
        return [("data", f"The document is {size:,} bytes as compact JSON; the limit is {MAX_BYTES:,}.")]
    found: list[tuple[str, str]] = []

    def walk(value, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    found.append((path, "A key contains a NUL character, which cannot be stored."))
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}.{index}")
        elif isinstance(value, str) and "\x00" in value:
            found.append((path, "Contains a NUL character, which cannot be stored."))

    walk(data, "data")
    return found[:10]


def _document(row: Workspace) -> Document:
    return Document(row.kind, row.data, row.version, row.updated_at)


def workspace_get(*, account_id: int, kind: str) -> Document:
    row = Workspace.objects.using(META).filter(account_id=account_id, kind=kind).first()
    return _document(row) if row else Document(kind, {}, 0, None)


def workspace_save(*, account_id: int, kind: str, data: dict, version: int | None = None) -> Document:
    try:
        with transaction.atomic(using=META):
            return _save(account_id, kind, data, version)
    except IntegrityError as exc:  # the deferred foreign key: the account went away meanwhile
        raise _gone() from exc


def _save(account_id: int, kind: str, data: dict, version: int | None) -> Document:
    rows = Workspace.objects.using(META).select_for_update()
    row = rows.filter(account_id=account_id, kind=kind).first()
    if row is None:
        if not Account.objects.using(META).filter(user_id=account_id, state=Account.ACTIVE).exists():
            raise _gone()
        # Two first writes at once: one inserts, the other's insert does nothing; both then lock the row.
        Workspace.objects.using(META).bulk_create(
            [Workspace(account_id=account_id, kind=kind, data={}, version=0, updated_at=timezone.now())],
            ignore_conflicts=True)
        row = rows.get(account_id=account_id, kind=kind)
    if version is not None and version != row.version:
        raise Conflict("version", f"Your `{kind}` workspace is at version {row.version}, not {version}: it was "
                                  "saved from somewhere else since you read it. Read it again (GET), merge, "
                                  "and send the version you read; or leave `version` out to overwrite it.")
    row.data, row.version, row.updated_at = data, row.version + 1, timezone.now()
    row.save(using=META, update_fields=["data", "version", "updated_at"])
    return _document(row)


def _gone() -> Forbidden:
    return Forbidden("This token's account no longer exists or is not active: sign in again.", field="Authorization")
