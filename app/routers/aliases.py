"""Aliases: ``PUT|DELETE /v1/aliases/{name}``, ``GET /v1/aliases``.

An alias is a stable name (``production``) pointing at a model id; every route that
takes a ``{model_id}`` to read or predict also takes an alias. A write here clears this
process's cached lookups at once (other API processes see it within
``settings.model_lookup_ttl_s``); a request already past its lookup finishes on the model
it resolved, which stays registered, so moving an alias under load drops nothing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Response
from fastapi import Path as PathParam

from app.deps import RuntimeDep, SessionDep
from app.routers import AUTH_ERRORS
from app.routers.predict import ServingRoute
from app.serving.schemas import ALIAS_PATTERN, AliasIn, AliasOut
from app.store import ModelStore

router = APIRouter(prefix="/v1/aliases", tags=["aliases"], route_class=ServingRoute)

AliasName = Annotated[
    str,
    PathParam(pattern=ALIAS_PATTERN, description="letters, digits, _ . - ; starts with a letter"),
]


def invalid(loc: list[str], msg: str) -> HTTPException:
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": "value_error"}])


@router.put(
    "/{name}",
    response_model=AliasOut,
    summary="Point an alias at a model (create or move)",
    responses={**AUTH_ERRORS, 422: {"description": "bad name, or no model with that id"}},
)
def put_alias(name: AliasName, body: AliasIn, session: SessionDep, runtime: RuntimeDep) -> AliasOut:
    if len(name) == 32 and all(c in "0123456789abcdef" for c in name):
        raise invalid(["path", "name"], "an alias may not look like a model id")
    store = ModelStore(session)
    if store.get(body.model_id) is None:
        raise invalid(["body", "model_id"], f"no model {body.model_id!r}")
    alias = AliasOut.model_validate(store.set_alias(name, body.model_id))
    session.commit()  # before forgetting cached lookups, or one could be re-cached stale
    runtime.directory.invalidate()
    return alias


@router.get("", response_model=list[AliasOut], responses=AUTH_ERRORS, summary="Every alias")
def list_aliases(session: SessionDep) -> list[AliasOut]:
    return [AliasOut.model_validate(a) for a in ModelStore(session).list_aliases()]


@router.delete(
    "/{name}",
    status_code=204,
    summary="Remove an alias (the model stays)",
    responses={**AUTH_ERRORS, 404: {"description": "no such alias"}},
)
def delete_alias(
    name: Annotated[str, PathParam(max_length=128)], session: SessionDep, runtime: RuntimeDep
) -> Response:
    if not ModelStore(session).delete_alias(name):
        raise HTTPException(404, f"no alias {name!r}")
    session.commit()
    runtime.directory.invalidate()
    return Response(status_code=204)
