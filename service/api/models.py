"""/models and /predict"""

from fastapi import APIRouter

from service import predict
from service.api.deps import LimitDep, ModelCacheDep, ModelDep, OffsetDep, SessionDep, SettingsDep
from service.errors import problem_responses
from service.schemas import EmbedRequest, EmbedResponse, ModelRead, Page, PredictRequest, PredictResponse

router = APIRouter(tags=["models"])


@router.get("/models", response_model=Page[ModelRead], responses=problem_responses(422),
            summary="List trained models, newest first")
def list_models(session: SessionDep, limit: LimitDep = 50, offset: OffsetDep = 0):
    items, total = predict.list_(session=session, limit=limit, offset=offset)
    return Page[ModelRead](items=items, total=total, limit=limit, offset=offset)


@router.get("/models/{model_id}", response_model=ModelRead, responses=problem_responses(404, 422),
            summary="Task, feature schema, labels and metrics")
def show_model(model: ModelDep):
    return model


@router.post("/predict", response_model=PredictResponse, responses=problem_responses(400, 404, 422),
             summary="Predict for records keyed by column name")
def predict_records(body: PredictRequest, session: SessionDep, cache: ModelCacheDep, settings: SettingsDep):
    model = predict.get(session=session, model_id=body.model_id)
    return predict.predict(cache=cache, model=model, records=body.records, inputs=body.inputs,
                           max_records=settings.max_predict_records)


@router.post("/models/{model_id}/embed", response_model=EmbedResponse, responses=problem_responses(400, 404, 422),
             summary="Autoencoder bottleneck codes")
def embed_records(body: EmbedRequest, model: ModelDep, cache: ModelCacheDep, settings: SettingsDep):
    return predict.embed(cache=cache, model=model, records=body.records, inputs=body.inputs,
                         max_records=settings.max_predict_records)
