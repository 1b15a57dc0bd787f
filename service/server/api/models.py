"""/models and /predict"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from service.schemas import EmbedRequest, EmbedResponse, ModelRead, Page, PredictRequest, PredictResponse
from service.server import inference, predict, registry
from service.server.api.deps import (
    LimitDep,
    ModelCacheDep,
    ModelDep,
    ModelRowDep,
    OffsetDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    model_cache_of,
    settings_of,
)
from service.server.auth import can_see
from service.server.errors import problem_responses
from service.server.tables import Model

router = APIRouter(tags=["models"])


@router.post("/predict", response_model=PredictResponse, responses=problem_responses(400, 404, 410, 422),
             summary="Predict for records keyed by column name")
async def predict_records(body: PredictRequest, request: Request, principal: PrincipalDep) -> dict[str, Any]:
    # The latency-critical path: the first route a request is matched against, the fewest dependencies (the cache
    # and the settings are read from the app here), one thread-pool call, and the database only for a model not
    # seen before (models never change owner, and are never deleted).
    # A registry reference ('name@alias', 'name:3') is resolved on every request: aliases move.
    cache, settings = model_cache_of(request.app), settings_of(request.app)

    def run() -> dict[str, Any]:
        ref, field = registry.reference(model_id=body.model_id, model=body.model)
        model_id = ref if registry.parse_reference(ref, field=field) is None else None
        owner = cache.owner(model_id) if model_id is not None else None
        if model_id is None or owner is None or not can_see(principal, owner):
            with request.app.state.sessions() as session:
                model_id = registry.resolve_model_id(session, principal, ref, field=field)
                cache.remember_owner(predict.get(session=session, model_id=model_id, principal=principal))
        return predict.predict(cache=cache, model_id=model_id, records=body.records, inputs=body.inputs,
                               max_records=settings.max_predict_records, uncertainty=body.uncertainty)

    return await run_in_threadpool(run)


@router.get("/models", response_model=Page[ModelRead], responses=problem_responses(422),
            summary="List trained models, newest first")
def list_models(session: SessionDep, principal: PrincipalDep, limit: LimitDep = 50,
                offset: OffsetDep = 0) -> Page[ModelRead]:
    items, total = predict.list_(session=session, principal=principal, limit=limit, offset=offset)
    return Page[ModelRead](items=items, total=total, limit=limit, offset=offset)


@router.get("/models/{model_id}", response_model=ModelRead, responses=problem_responses(404, 410, 422),
            summary="Task, feature schema, labels and metrics")
def show_model(model: ModelDep) -> Model:
    return model


@router.get("/models/{model_id}/download", response_class=StreamingResponse,
            summary="The model as a zip: weights.safetensors and model.json (no pickle)",
            responses={200: {"content": {"application/zip": {}},
                             "description": "weights.safetensors (the state dict) and model.json (architecture, "
                                            "preprocessing, labels, metrics)"},
                       **problem_responses(404, 410, 422)})
async def download_model(model: ModelDep, storage: StorageDep) -> StreamingResponse:
    body = await run_in_threadpool(predict.package, storage, model)
    return StreamingResponse(iterate_in_threadpool(body), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{model.id}.zip"'})


@router.get("/models/{model_id}/export", response_class=Response,
            summary="The model as one self-contained ONNX graph: raw feature columns in, probabilities or values out",
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "An .onnx file: one input per feature column (float64, or a string for a "
                                            "categorical column), preprocessing inside the graph; outputs "
                                            "'predictions' and, for a classifier, 'probabilities'"},
                       **problem_responses(404, 410, 422)})
async def export_model(model: ModelDep, cache: ModelCacheDep,
                       format: Annotated[Literal["onnx"], Query(description="The file format")] = "onnx") -> Response:
    body = await run_in_threadpool(lambda: inference.export(cache=cache, model=model))
    return Response(body, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{model.id}.onnx"'})


@router.delete("/models/{model_id}", status_code=204, responses=problem_responses(404, 409, 422),
               summary="Delete a model: its record, files and cached copies (the job that trained it stays); 409 "
                       "while a registry alias points at it")
def delete_model(model: ModelRowDep, session: SessionDep, cache: ModelCacheDep) -> Response:
    predict.delete(session=session, cache=cache, model=model)
    return Response(status_code=204)


@router.post("/models/{model_id}/embed", response_model=EmbedResponse,
             responses=problem_responses(400, 404, 410, 422),
             summary="Autoencoder bottleneck codes")
def embed_records(body: EmbedRequest, model: ModelDep, cache: ModelCacheDep, settings: SettingsDep) -> dict[str, Any]:
    return predict.embed(cache=cache, model=model, records=body.records, inputs=body.inputs,
                         max_records=settings.max_predict_records)
