"""/jobs"""

from fastapi import APIRouter, Query, Response

from service.schemas import EpochMetricsRead, JobComparison, JobCreate, JobMetrics, JobRead, LabelsUpdate, Page, Tag
from service.server import jobs, queue
from service.server.api.deps import JobDep, LimitDep, OffsetDep, PrincipalDep, SessionDep, SettingsDep
from service.server.api.idempotency import IdempotentJSON
from service.server.errors import problem_responses
from service.server.tables import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=202, response_model=JobRead, responses=problem_responses(400, 404, 409, 422),
             summary="Submit a training job")
def submit_job(spec: JobCreate, idempotency: IdempotentJSON, session: SessionDep, principal: PrincipalDep,
               settings: SettingsDep) -> Response:
    if idempotency.replay is not None:
        return idempotency.replay
    job = jobs.submit(session=session, spec=spec, principal=principal, settings=settings)
    return idempotency.respond(jobs.to_read(job), 202, {"Location": f"/jobs/{job.id}"})


@router.get("", response_model=Page[JobRead], responses=problem_responses(422), summary="List jobs, newest first")
def list_jobs(session: SessionDep, principal: PrincipalDep, status: JobStatus | None = Query(default=None),
              dataset_id: str | None = Query(default=None, max_length=64),
              tag: Tag | None = Query(default=None, description="Jobs carrying this tag"),
              name: str | None = Query(default=None, max_length=255, description="Jobs with this name"),
              search_id: str | None = Query(default=None, max_length=64, description="The trials of this search"),
              limit: LimitDep = 50, offset: OffsetDep = 0) -> Page[JobRead]:
    items, total = jobs.list_(session=session, principal=principal, status=status, dataset_id=dataset_id,
                              limit=limit, offset=offset, tag=tag, name=name, search_id=search_id)
    return Page[JobRead](items=[jobs.to_read(j) for j in items], total=total, limit=limit, offset=offset)


@router.get("/compare", response_model=JobComparison, responses=problem_responses(404, 422),
            summary="Jobs side by side: aligned metric histories, final metrics, spec differences")
def compare_jobs(session: SessionDep, principal: PrincipalDep,
                 ids: str = Query(max_length=2000, description="Comma-separated job ids (2 to 20)")) -> JobComparison:
    return jobs.compare(session=session, principal=principal, ids=[i.strip() for i in ids.split(",") if i.strip()])


@router.get("/{job_id}", response_model=JobRead, responses=problem_responses(404, 422),
            summary="Status, progress and latest metrics of a job")
def show_job(job: JobDep) -> JobRead:
    return jobs.to_read(job)


@router.patch("/{job_id}", response_model=JobRead, responses=problem_responses(400, 404, 422),
              summary="Name, tag or annotate a job")
def update_job(job: JobDep, labels: LabelsUpdate, session: SessionDep) -> JobRead:
    return jobs.to_read(jobs.update_labels(session=session, job=job, labels=labels))


@router.get("/{job_id}/metrics", response_model=JobMetrics, responses=problem_responses(404, 422),
            summary="Every epoch's metrics")
def job_metrics(job: JobDep, session: SessionDep,
                members: bool = Query(default=False, description="Include each ensemble member's own figures")
                ) -> JobMetrics:
    rows = jobs.metrics(session=session, job=job)
    result = job.result or {}
    return JobMetrics(job_id=job.id, task=job.task,
                      epochs=[EpochMetricsRead(epoch=r.epoch, metrics=jobs.epoch_figures(r.metrics, members=members))
                              for r in rows],
                      test=result.get("test"), confusion_matrix=result.get("confusion_matrix"),
                      report=result.get("report"))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobRead, responses=problem_responses(404, 409, 422),
             summary="Cancel a queued or running job")
def cancel_job(job: JobDep, session: SessionDep) -> JobRead:
    return jobs.to_read(queue.request_cancel(session=session, job=job))
