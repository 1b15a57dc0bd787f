"""/datasets"""

import asyncio
import logging
import threading

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.schemas import DatasetPreview, DatasetRead, DatasetUpdate, Page
from service.server import datasets
from service.server.api.deps import DatasetDep, LimitDep, OffsetDep, PrincipalDep, SessionDep, SettingsDep, StorageDep
from service.server.api.idempotency import IdempotentUpload
from service.server.errors import InvalidInput, problem_responses
from service.server.idempotency import Fingerprint
from service.server.tables import Dataset
from service.server.uploads import multipart_body, receive_file
from service.training.ingest import Cancelled, preview

log = logging.getLogger("mlps.api")
router = APIRouter(prefix="/datasets", tags=["datasets"])

UPLOAD_BODY = multipart_body(
    "CSV, TSV, Parquet or .npz; the header row names the columns",
    {"file": "sepal_length,petal_length,species\n5.1,1.4,Iris-setosa\n", "name": "iris"},
    {"name": {"type": "string", "description": "Display name (default: the file name)"}},
)


@router.post("", status_code=201, response_model=DatasetRead, openapi_extra=UPLOAD_BODY,
             responses=problem_responses(409, 413, 415, 422),
             summary="Upload a data set (multipart field 'file')")
async def upload_dataset(request: Request, idempotency: IdempotentUpload, session: SessionDep, storage: StorageDep,
                         settings: SettingsDep, principal: PrincipalDep) -> Response:
    storage.ensure()
    raw = storage.temp_path(".upload")
    gone = threading.Event()  # the client went away: parsing stops at its next batch
    watch: asyncio.Task[None] | None = None
    try:
        upload = await receive_file(request, raw, max_bytes=settings.max_upload_bytes)
        if (replay := await idempotency.begin(Fingerprint.of_upload(
                request.method, request.url.path, file_sha256=upload.sha256, filename=upload.filename,
                fields=upload.fields))) is not None:
            return replay
        watch = asyncio.create_task(_watch_disconnect(request, gone))  # the body is read: only a disconnect is left
        given = upload.fields.get("name")
        name = datasets.clean_name(given, "upload") if given else datasets.clean_name(upload.filename, "upload",
                                                                                       path=True)
        dataset = await run_in_threadpool(
            datasets.create, session=session, storage=storage, upload_path=raw, name=name,
            size_bytes=upload.size, sha256=upload.sha256, owner=principal.owner,
            max_columns=settings.max_columns, max_rows=settings.max_rows, max_array_bytes=settings.max_array_bytes,
            cancelled=gone.is_set)
        return await run_in_threadpool(idempotency.respond, DatasetRead.model_validate(dataset), 201)
    except Cancelled:
        log.info("upload of %s abandoned by its client during parsing; nothing kept", raw.name)
        idempotency.transient()
        raise InvalidInput("the client went away before the data set was stored",
                           errors=[{"field": "file", "message": "client disconnected"}]) from None
    finally:
        if watch is not None:
            watch.cancel()
        raw.unlink(missing_ok=True)


async def _watch_disconnect(request: Request, gone: threading.Event) -> None:
    """Set `gone` once the client disconnects (started once the whole body was read: no chunk is taken from it)."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)
    gone.set()


@router.get("", response_model=Page[DatasetRead], responses=problem_responses(422),
            summary="List data sets, newest first")
def list_datasets(session: SessionDep, principal: PrincipalDep, limit: LimitDep = 50,
                  offset: OffsetDep = 0) -> Page[DatasetRead]:
    items, total = datasets.list_(session=session, principal=principal, limit=limit, offset=offset)
    return Page[DatasetRead](items=items, total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=problem_responses(404, 422),
            summary="Show a data set and its column schema")
def show_dataset(dataset: DatasetDep) -> Dataset:
    return dataset


@router.patch("/{dataset_id}", response_model=DatasetRead, responses=problem_responses(400, 404, 422),
              summary="Rename a data set or set the kinds of its columns")
def update_dataset(change: DatasetUpdate, dataset: DatasetDep, session: SessionDep, storage: StorageDep) -> Dataset:
    return datasets.update(session=session, storage=storage, dataset=dataset, change=change)


@router.get("/{dataset_id}/preview", response_model=DatasetPreview, responses=problem_responses(404, 422),
            summary="First rows of a data set")
def preview_dataset(dataset: DatasetDep, storage: StorageDep, settings: SettingsDep,
                    limit: LimitDep = 20) -> DatasetPreview:
    rows = preview(storage.dataset_file(dataset.id, dataset.format), min(limit, settings.preview_rows * 50))
    return DatasetPreview(dataset_id=dataset.id, columns=[c["name"] for c in dataset.columns], rows=rows)


@router.delete("/{dataset_id}", status_code=204, responses=problem_responses(404, 409, 422),
               summary="Delete a data set (409 while a job needs it)")
def delete_dataset(dataset: DatasetDep, session: SessionDep, storage: StorageDep) -> Response:
    datasets.delete(session=session, storage=storage, dataset=dataset)
    return Response(status_code=204)
