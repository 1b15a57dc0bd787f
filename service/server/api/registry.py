"""/registry: names, numbered versions and aliases of trained models (service.server.registry does the work)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response

from service.schemas import (
    ALIAS_NAME,
    REGISTRY_NAME,
    AliasMoveRead,
    AliasMoveRequest,
    AliasRead,
    ModelVersionRead,
    Page,
    RegisteredModelRead,
    RegisterModel,
)
from service.server import registry
from service.server.api.deps import LimitDep, OffsetDep, PrincipalDep, SessionDep
from service.server.errors import problem_responses
from service.server.tables import RegisteredName

router = APIRouter(tags=["registry"])

NamePath = Annotated[str, Path(pattern=REGISTRY_NAME, description="A registered name: letters, digits and ._- "
                                                                   "(at most 128), in the caller's namespace",
                               examples=["iris"])]
AliasPath = Annotated[str, Path(pattern=ALIAS_NAME, description="An alias: a letter, then letters, digits, _ or - "
                                                                 "(at most 64)", examples=["production"])]
VersionPath = Annotated[int, Path(ge=1, le=10**9, description="A version number of the name")]


def name_or_404(name: NamePath, session: SessionDep, principal: PrincipalDep) -> RegisteredName:
    return registry.get_name(session=session, principal=principal, name=name)


NameDep = Annotated[RegisteredName, Depends(name_or_404)]


@router.get("/registry", response_model=Page[RegisteredModelRead], responses=problem_responses(422),
            summary="List your registered names, alphabetically")
def list_registered(session: SessionDep, principal: PrincipalDep, limit: LimitDep = 50,
                    offset: OffsetDep = 0) -> Page[RegisteredModelRead]:
    items, total = registry.list_names(session=session, principal=principal, limit=limit, offset=offset)
    return Page[RegisteredModelRead](items=[RegisteredModelRead.model_validate(i) for i in items], total=total,
                                     limit=limit, offset=offset)


@router.post("/registry/{name}", status_code=201, response_model=ModelVersionRead,
             responses=problem_responses(400, 404, 409, 422),
             summary="Register a model as the name's next version (the name is created on first use)")
def register_model(name: NamePath, body: RegisterModel, session: SessionDep, principal: PrincipalDep,
                   response: Response) -> dict[str, Any]:
    version = registry.register(session=session, principal=principal, name=name, model_id=body.model_id)
    response.headers["Location"] = f"/registry/{name}/versions/{version['version']}"
    return version


@router.get("/registry/{name}", response_model=RegisteredModelRead, responses=problem_responses(404, 422),
            summary="A registered name: its newest version, how many there are, its aliases")
def show_registered(reg: NameDep, session: SessionDep) -> dict[str, Any]:
    return registry.describe(session=session, reg=reg)


@router.get("/registry/{name}/versions", response_model=Page[ModelVersionRead], responses=problem_responses(404, 422),
            summary="The name's versions, newest first")
def list_versions(reg: NameDep, session: SessionDep, limit: LimitDep = 50,
                  offset: OffsetDep = 0) -> Page[ModelVersionRead]:
    items, total = registry.list_versions(session=session, reg=reg, limit=limit, offset=offset)
    return Page[ModelVersionRead](items=[ModelVersionRead.model_validate(i) for i in items], total=total,
                                  limit=limit, offset=offset)


@router.get("/registry/{name}/versions/{version}", response_model=ModelVersionRead,
            responses=problem_responses(404, 422), summary="One version: its model and the aliases that point at it")
def show_version(reg: NameDep, version: VersionPath, session: SessionDep) -> dict[str, Any]:
    return registry.show_version(session=session, reg=reg, version=version)


@router.put("/registry/{name}/aliases/{alias}", response_model=AliasRead,
            responses=problem_responses(400, 404, 409, 422),
            summary="Point an alias at a version, atomically (with expected_version: only if it points there now)")
def move_alias(reg: NameDep, alias: AliasPath, body: AliasMoveRequest, session: SessionDep,
               principal: PrincipalDep) -> dict[str, Any]:
    return registry.move_alias(session=session, principal=principal, reg=reg, alias=alias, version=body.version,
                               expected_version=body.expected_version)


@router.get("/registry/{name}/aliases/{alias}", response_model=AliasRead, responses=problem_responses(404, 422),
            summary="Where an alias points, and who moved it there when")
def show_alias(reg: NameDep, alias: AliasPath, session: SessionDep) -> dict[str, Any]:
    return registry.show_alias(session=session, reg=reg, alias=alias)


@router.delete("/registry/{name}/aliases/{alias}", status_code=204, responses=problem_responses(404, 422),
               summary="Remove an alias (its versions stay; the move is recorded)")
def remove_alias(reg: NameDep, alias: AliasPath, session: SessionDep, principal: PrincipalDep) -> Response:
    registry.remove_alias(session=session, principal=principal, reg=reg, alias=alias)
    return Response(status_code=204)


@router.get("/registry/{name}/aliases/{alias}/history", response_model=Page[AliasMoveRead],
            responses=problem_responses(404, 422), summary="Every move of an alias: who, when, from and to which "
                                                           "version, newest first")
def alias_history(reg: NameDep, alias: AliasPath, session: SessionDep, limit: LimitDep = 50,
                  offset: OffsetDep = 0) -> Page[AliasMoveRead]:
    items, total = registry.alias_history(session=session, reg=reg, alias=alias, limit=limit, offset=offset)
    return Page[AliasMoveRead](items=[AliasMoveRead.model_validate(i, from_attributes=True) for i in items],
                               total=total, limit=limit, offset=offset)
