"""The model registry: names in each owner's namespace, numbered versions, aliases moved atomically with an audit
record of every move, and the resolution of a reference ('name@alias', 'name:3' or a model id) to a model id.

Concurrency: registering and moving take the name's row first, with one UPDATE (a row lock on PostgreSQL, the
write lock on SQLite), so that two requests on one name run one after the other and each reads what the other
wrote: version numbers never repeat, and each alias move's answer names the version the alias really left.
"""

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.schemas import ALIAS_NAME, REGISTRY_NAME
from service.server.auth import Principal, can_see
from service.server.db import utcnow
from service.server.errors import Conflict, InvalidInput, NotFound
from service.server.queue import new_id
from service.server.tables import AliasMove, Model, ModelVersion, RegisteredName, RegistryAlias

SHOWN = 20  # names, versions or aliases listed at most in a 404's message
_NAME = re.compile(REGISTRY_NAME)
_ALIAS = re.compile(ALIAS_NAME)


@dataclass(frozen=True)
class Reference:
    """A parsed 'name@alias' or 'name:version'."""

    name: str
    alias: str | None = None
    version: int | None = None


def parse_reference(ref: str, *, field: str = "model") -> Reference | None:
    """'name@alias' or 'name:N' as a Reference; None for anything else (a model id). A malformed reference is
    InvalidInput naming `field`."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if not _NAME.fullmatch(name) or not _ALIAS.fullmatch(alias):
            raise InvalidInput(f"'{ref}' is not a registry reference: send 'name@alias' with a name of letters, "
                               "digits and ._- and an alias starting with a letter (e.g. iris@production)",
                               errors=[{"field": field, "message": "malformed reference"}])
        return Reference(name=name, alias=alias)
    if ":" in ref:
        name, _, version = ref.rpartition(":")
        if (not _NAME.fullmatch(name) or not (version.isascii() and version.isdigit())
                or not 1 <= int(version) <= 10**9):
            raise InvalidInput(f"'{ref}' is not a registry reference: send 'name:N' with a version number N from 1 "
                               "(e.g. iris:3)", errors=[{"field": field, "message": "malformed reference"}])
        return Reference(name=name, version=int(version))
    return None


def reference(*, model_id: str | None, model: str | None) -> tuple[str, str]:
    """(the model reference a request sent, the field it came in): exactly one of model_id and model."""
    if (model_id is None) == (model is None):
        both = "both" if model_id is not None else "neither"
        raise InvalidInput(f"{both} of 'model_id' and 'model' sent; send one: a model id, 'name@alias' or 'name:N'",
                           errors=[{"field": "model", "message": f"send model_id or model, not {both}"}])
    if model is not None:
        return model, "model"
    assert model_id is not None
    return model_id, "model_id"


def resolve_model_id(session: Session, principal: Principal, ref: str, *, field: str = "model") -> str:
    """The id of the model `ref` names: a model id, 'name@alias' or 'name:N' in the caller's namespace; NotFound
    (naming what exists) for an unknown model, name, alias or version."""
    parsed = parse_reference(ref, field=field)
    if parsed is None:
        model = session.get(Model, ref)
        if model is None or not can_see(principal, model.owner):
            hint = "; GET /models lists them"
            if _find_name(session, principal, ref) is not None:
                hint = f"; '{ref}' is a registered name: send '{ref}@ALIAS' or '{ref}:VERSION'"
            raise NotFound(f"no model with id '{ref}'{hint}", errors=[{"field": field, "message": "unknown model"}])
        return ref
    reg = get_name(session=session, principal=principal, name=parsed.name, field=field)
    if parsed.alias is not None:
        return _alias_row(session, reg, parsed.alias, field=field)[1].model_id
    assert parsed.version is not None
    return get_version(session=session, reg=reg, version=parsed.version, field=field).model_id


# ---------------------------------------------------------------- names


def _find_name(session: Session, principal: Principal, name: str) -> RegisteredName | None:
    return session.scalar(select(RegisteredName).where(RegisteredName.owner == principal.owner,
                                                       RegisteredName.name == name))


def get_name(*, session: Session, principal: Principal, name: str, field: str = "name") -> RegisteredName:
    """The caller's registered name, or NotFound listing the names they have."""
    reg = _find_name(session, principal, name)
    if reg is None:
        names = session.scalars(select(RegisteredName.name).where(RegisteredName.owner == principal.owner)
                                .order_by(RegisteredName.name).limit(SHOWN + 1)).all()
        known = (f"your registered names: {_listed(names)}" if names else
                 "you have no registered names yet; POST /registry/{name} with a model_id registers one")
        raise NotFound(f"no registered model named '{name}'; {known}",
                       errors=[{"field": field, "message": "unknown registered name"}])
    return reg


def _listed(items: list[str] | Any) -> str:
    items = list(items)
    return ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")


def describe(*, session: Session, reg: RegisteredName) -> dict[str, Any]:
    """A name as RegisteredModelRead: its newest version, how many there are, its aliases."""
    latest, count = session.execute(select(func.max(ModelVersion.version), func.count())
                                    .where(ModelVersion.name_id == reg.id)).one()
    aliases = session.execute(select(RegistryAlias.alias, ModelVersion.version)
                              .join(ModelVersion, ModelVersion.id == RegistryAlias.version_id)
                              .where(RegistryAlias.name_id == reg.id).order_by(RegistryAlias.alias)).all()
    return {"name": reg.name, "owner": reg.owner, "latest_version": latest, "versions": int(count),
            "aliases": {alias: version for alias, version in aliases}, "created_at": reg.created_at,
            "updated_at": reg.updated_at}


def list_names(*, session: Session, principal: Principal, limit: int,
               offset: int) -> tuple[list[dict[str, Any]], int]:
    """A page of the caller's registered names, alphabetically."""
    query = select(RegisteredName).where(RegisteredName.owner == principal.owner)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(RegisteredName.name).limit(limit).offset(offset)).all()
    return [describe(session=session, reg=reg) for reg in rows], int(total or 0)


def _lock_name(session: Session, reg_id: str) -> None:
    """Take the name's row for the rest of the transaction (see the module's docstring)."""
    session.execute(update(RegisteredName).where(RegisteredName.id == reg_id).values(updated_at=utcnow()))


# ---------------------------------------------------------------- versions


def _version_view(session: Session, reg: RegisteredName, version: ModelVersion) -> dict[str, Any]:
    aliases = session.scalars(select(RegistryAlias.alias).where(RegistryAlias.version_id == version.id)
                              .order_by(RegistryAlias.alias)).all()
    return {"name": reg.name, "version": version.version, "model_id": version.model_id, "aliases": list(aliases),
            "registered_by": version.registered_by, "registered_at": version.registered_at}


def register(*, session: Session, principal: Principal, name: str, model_id: str) -> dict[str, Any]:
    """Register a model under a name (created on first use) as its next version."""
    model = session.get(Model, model_id)
    if model is None or not can_see(principal, model.owner):
        raise NotFound(f"no model with id '{model_id}'; GET /models lists them",
                       errors=[{"field": "model_id", "message": "unknown model"}])
    if model.owner != principal.owner:  # an admin's names would otherwise pin another owner's model
        raise InvalidInput(f"model '{model_id}' belongs to {model.owner}; a registry name holds its own owner's "
                           "models only (register it with that owner's key)",
                           errors=[{"field": "model_id", "message": "another owner's model"}])
    now = utcnow()
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # A name registered by two requests at once: the second insert does nothing, and both number from one row.
    session.execute(insert(RegisteredName).values(id=new_id("reg"), owner=principal.owner, name=name, last_version=0,
                                                  created_at=now, updated_at=now)
                    .on_conflict_do_nothing(index_elements=["owner", "name"]))
    reg_id, number = session.execute(
        update(RegisteredName).where(RegisteredName.owner == principal.owner, RegisteredName.name == name)
        .values(last_version=RegisteredName.last_version + 1, updated_at=now)
        .returning(RegisteredName.id, RegisteredName.last_version)).one()
    already = session.scalar(select(ModelVersion.version).where(ModelVersion.name_id == reg_id,
                                                                ModelVersion.model_id == model_id))
    if already is not None:
        raise Conflict(f"model '{model_id}' is already version {already} of '{name}'; one model is registered once "
                       "per name", errors=[{"field": "model_id", "message": f"already {name}:{already}"}])
    version = ModelVersion(name_id=reg_id, version=number, model_id=model_id, registered_by=principal.owner,
                           registered_at=now)
    session.add(version)
    session.flush()
    reg = session.get(RegisteredName, reg_id)
    assert reg is not None
    return _version_view(session, reg, version)


def get_version(*, session: Session, reg: RegisteredName, version: int, field: str = "version") -> ModelVersion:
    """Version N of the name, or NotFound listing its versions."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.name_id == reg.id, ModelVersion.version == version))
    if row is None:
        numbers = session.scalars(select(ModelVersion.version).where(ModelVersion.name_id == reg.id)
                                  .order_by(ModelVersion.version.desc()).limit(SHOWN + 1)).all()
        known = (f"its versions: {_listed(str(n) for n in numbers)}" if numbers
                 else "it has no versions left (their models were deleted)")
        raise NotFound(f"'{reg.name}' has no version {version}; {known}",
                       errors=[{"field": field, "message": "unknown version"}])
    return row


def show_version(*, session: Session, reg: RegisteredName, version: int) -> dict[str, Any]:
    """Version N of the name as ModelVersionRead."""
    return _version_view(session, reg, get_version(session=session, reg=reg, version=version))


def list_versions(*, session: Session, reg: RegisteredName, limit: int,
                  offset: int) -> tuple[list[dict[str, Any]], int]:
    """A page of the name's versions, newest first."""
    query = select(ModelVersion).where(ModelVersion.name_id == reg.id)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(ModelVersion.version.desc()).limit(limit).offset(offset)).all()
    return [_version_view(session, reg, row) for row in rows], int(total or 0)


# ---------------------------------------------------------------- aliases


def _current(session: Session, reg: RegisteredName, alias: str) -> tuple[RegistryAlias, ModelVersion] | None:
    """The alias and the version it points at, read afresh (never the session's cached copy), or None."""
    found = session.execute(select(RegistryAlias, ModelVersion)
                            .join(ModelVersion, ModelVersion.id == RegistryAlias.version_id)
                            .where(RegistryAlias.name_id == reg.id, RegistryAlias.alias == alias)
                            .execution_options(populate_existing=True)).first()
    return None if found is None else (found[0], found[1])


def _alias_row(session: Session, reg: RegisteredName, alias: str, *,
               field: str = "alias") -> tuple[RegistryAlias, ModelVersion]:
    """The alias and the version it points at, or NotFound listing the name's aliases."""
    found = _current(session, reg, alias)
    if found is None:
        aliases = describe(session=session, reg=reg)["aliases"]
        known = (f"its aliases: {_listed(f'{a} (version {v})' for a, v in aliases.items())}" if aliases else
                 f"it has no aliases yet; PUT /registry/{reg.name}/aliases/{alias} with {{\"version\": N}} sets one")
        raise NotFound(f"'{reg.name}' has no alias '{alias}'; {known}",
                       errors=[{"field": field, "message": "unknown alias"}])
    return found


def _previous(session: Session, reg: RegisteredName, alias: str) -> int | None:
    return session.scalar(select(AliasMove.from_version).where(AliasMove.name_id == reg.id, AliasMove.alias == alias)
                          .order_by(AliasMove.id.desc()).limit(1))


def _alias_view(reg: RegisteredName, row: RegistryAlias, version: ModelVersion,
                previous: int | None) -> dict[str, Any]:
    return {"name": reg.name, "alias": row.alias, "version": version.version, "model_id": version.model_id,
            "previous_version": previous, "moved_by": row.moved_by, "moved_at": row.moved_at}


def show_alias(*, session: Session, reg: RegisteredName, alias: str) -> dict[str, Any]:
    """The alias as AliasRead: its version and model, and who moved it last, when, from which version."""
    row, version = _alias_row(session, reg, alias)
    return _alias_view(reg, row, version, _previous(session, reg, alias))


def move_alias(*, session: Session, principal: Principal, reg: RegisteredName, alias: str, version: int,
               expected_version: int | None) -> dict[str, Any]:
    """Point the alias at a version (creating it), atomically, and record the move. With `expected_version`, only
    if the alias points at that version now (0: does not exist yet), else Conflict naming where it points."""
    _lock_name(session, reg.id)
    target = get_version(session=session, reg=reg, version=version)
    current = _current(session, reg, alias)
    before = current[1].version if current is not None else None
    if expected_version is not None and (before or 0) != expected_version:
        now_at = f"points at version {before}" if before is not None else "does not exist yet"
        raise Conflict(f"'{reg.name}@{alias}' {now_at}, not {expected_version or 'nothing'} as expected; nothing was "
                       f"moved (GET /registry/{reg.name}/aliases/{alias}/history shows who moved it)",
                       errors=[{"field": "expected_version", "message": f"the alias {now_at}"}])
    now = utcnow()
    if current is None:
        row = RegistryAlias(name_id=reg.id, alias=alias, version_id=target.id, moved_by=principal.owner, moved_at=now)
        session.add(row)
    else:
        row = current[0]
        row.version_id, row.moved_by, row.moved_at = target.id, principal.owner, now
    session.add(AliasMove(name_id=reg.id, alias=alias, from_version=before, to_version=version,
                          model_id=target.model_id, moved_by=principal.owner, key_id=principal.key_id, moved_at=now))
    try:
        session.flush()
    except IntegrityError:  # the version's model was deleted between the lookup and the move
        raise NotFound(f"version {version} of '{reg.name}' no longer exists (its model was deleted); nothing was "
                       "moved", errors=[{"field": "version", "message": "deleted meanwhile"}]) from None
    return _alias_view(reg, row, target, before)


def remove_alias(*, session: Session, principal: Principal, reg: RegisteredName, alias: str) -> None:
    """Remove the alias (its versions stay), and record it."""
    _lock_name(session, reg.id)
    row, version = _alias_row(session, reg, alias)
    session.delete(row)
    session.add(AliasMove(name_id=reg.id, alias=alias, from_version=version.version, to_version=None,
                          model_id=None, moved_by=principal.owner, key_id=principal.key_id, moved_at=utcnow()))
    session.flush()


def alias_history(*, session: Session, reg: RegisteredName, alias: str, limit: int,
                  offset: int) -> tuple[list[AliasMove], int]:
    """A page of the alias's moves, newest first (also of an alias since removed)."""
    query = select(AliasMove).where(AliasMove.name_id == reg.id, AliasMove.alias == alias)
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    if total == 0:
        _alias_row(session, reg, alias)  # never moved: the 404 that lists the name's aliases
    rows = session.scalars(query.order_by(AliasMove.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), total


def aliases_of(session: Session, model_id: str) -> list[tuple[str, str, int]]:
    """(name, alias, version) of every alias that points at the model."""
    rows = session.execute(select(RegisteredName.name, RegistryAlias.alias, ModelVersion.version)
                           .join(ModelVersion, ModelVersion.id == RegistryAlias.version_id)
                           .join(RegisteredName, RegisteredName.id == RegistryAlias.name_id)
                           .where(ModelVersion.model_id == model_id)
                           .order_by(RegisteredName.name, RegistryAlias.alias)).all()
    return [(name, alias, version) for name, alias, version in rows]


def refuse_if_aliased(*, session: Session, model_id: str) -> None:
    """Conflict when an alias points at the model: it is deleted only once every such alias has moved."""
    held = aliases_of(session, model_id)
    if held:
        names = ", ".join(f"{name}@{alias} (version {version})" for name, alias, version in held)
        name, alias, _ = held[0]
        raise Conflict(f"model '{model_id}' is in use by {names}; move the alias to another version first "
                       f"(PUT /registry/{name}/aliases/{alias} with {{\"version\": N}}, or `mlps models alias "
                       f"{name} {alias} N`) or remove it (DELETE /registry/{name}/aliases/{alias})",
                       errors=[{"field": "model_id", "message": f"in use by {name}@{alias}"
                                + (f" and {len(held) - 1} more alias(es)" if len(held) > 1 else "")}])
