"""POST /models/{id}/predict: score a whole CSV (or Parquet) file, streaming the predictions back as CSV.

The upload streams to a temp file, service.server.scoring checks it against the model and scores it in batches;
the answer's X-Row-Count header says how many rows follow.
"""

import logging

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from service.server import predict, registry
from service.server.api.deps import PrincipalDep
from service.server.errors import problem_responses
from service.server.scoring import prepare_scoring
from service.server.tables import Model
from service.server.uploads import multipart_body, receive_file

log = logging.getLogger("mlps.api")
router = APIRouter(tags=["models"])

ROW_COUNT_HEADER = "X-Row-Count"

UPLOAD_BODY = multipart_body(
    "CSV, TSV or Parquet with (at least) the model's feature columns; the header row names the columns",
    {"file": "sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n"},
)


@router.post("/models/{model_id}/predict", openapi_extra=UPLOAD_BODY, response_class=StreamingResponse,
             summary="Score a CSV or Parquet file (multipart field 'file'); answers CSV with predictions",
             responses={200: {"content": {"text/csv": {}},
                              "description": "The input columns, then 'prediction' and, for classifiers, "
                                             "'p_<label>' per class"},
                        **problem_responses(404, 410, 413, 415, 422)})
async def score_file(model_id: str, request: Request, principal: PrincipalDep,
                     escape_formulas: bool = Query(
                         default=True, description="Prefix text cells and headers starting with =, +, -, @, tab or "
                                                   "CR (not numbers) with ' so that a spreadsheet shows them as text "
                                                   "instead of running them; false returns them as they are")
                     ) -> StreamingResponse:
    """Receive a file, check it against the model, and stream its rows back with predictions as CSV."""
    state = request.app.state

    def lookup() -> Model:
        with state.sessions() as session:  # the path names a model id, or 'name@alias' / 'name:3'
            resolved = registry.resolve_model_id(session, principal, model_id, field="model_id")
            return predict.get(session=session, model_id=resolved, principal=principal)

    model = await run_in_threadpool(lookup)
    state.storage.ensure()
    upload_path = state.storage.temp_path(".score")
    try:
        await receive_file(request, upload_path, max_bytes=state.settings.max_upload_bytes)
        n_rows, body = await run_in_threadpool(prepare_scoring, state.model_cache, model, upload_path,
                                               escape_formulas)
    except BaseException:
        upload_path.unlink(missing_ok=True)
        raise
    filename = f"predictions-{model.id}.csv"
    return StreamingResponse(body, media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                      ROW_COUNT_HEADER: str(n_rows)},
                             background=BackgroundTask(upload_path.unlink, missing_ok=True))
