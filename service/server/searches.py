"""Hyperparameter searches: the space checked against the job spec, Optuna's samplers and pruners over our own
trial rows, the driver that turns suggestions into jobs, and the leaderboard.

The database is the only state. Each time the driver needs a suggestion or a pruning decision it rebuilds an
in-memory Optuna study from the search's trial rows and their jobs' epoch rows (`_study`), asks or prunes, and
forgets it; so any API process can drive any search, and a kill -9 of any process loses nothing. A trial row is
inserted in the same transaction as its job, under a unique (search_id, number): of two drivers racing for trial
n, the second one's transaction fails and changes nothing.
"""

import contextlib
import difflib
import itertools
import json
import logging
import math
import random
import threading
from datetime import datetime
from typing import Any, Literal, get_args, get_origin

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState as OptunaState
from optuna.trial import create_trial
from pydantic import BaseModel, ValidationError
from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.schemas import (
    ChoiceParam,
    FloatParam,
    JobCreate,
    LabelsUpdate,
    SearchCreate,
    SearchProgress,
    SearchRead,
    TrialRead,
)
from service.server import jobs, queue, webhooks
from service.server.auth import Principal, can_see
from service.server.config import Settings
from service.server.db import session_scope, utcnow
from service.server.errors import Conflict, InvalidInput, NotFound, ServiceError, TooManyRequests
from service.server.faults import Backoff
from service.server.tables import EpochMetric, Job, JobStatus, Search, SearchStatus, SearchTrial, TrialState
from service.training.tasks import metric_names

log = logging.getLogger("mlps.searches")
optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_ACTIVE_SEARCHES = 20  # running searches per owner
DRIVE_EVERY_S = 1.0  # the longest pause between two rounds of the driver
# Fields a search cannot vary: they say what is learnt from what, not how.
NOT_SEARCHABLE = ("dataset_id", "target", "features")
LOWER_IS_BETTER = ("val_loss", "val_rmse", "val_mae")
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED, TrialState.CANCELLED)


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(message, errors=[{"field": field, "message": message}])


# ---------------------------------------------------------------- the space, checked against the job spec


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (ModelSpec for `model`), None for a leaf."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and get_origin(candidate) is None:
            return candidate
    return None


def searchable_fields() -> list[str]:
    """Every dotted spec path a search may vary."""
    paths: list[str] = []
    for name, info in JobCreate.model_fields.items():
        sub = _submodel(info.annotation)
        if name in NOT_SEARCHABLE:
            continue
        paths.extend(f"{name}.{field}" for field in sub.model_fields) if sub is not None else paths.append(name)
    return paths


def _check_path(path: str) -> None:
    known = searchable_fields()
    if path in known:
        return
    if path.split(".")[0] in NOT_SEARCHABLE:
        raise _invalid(f"space.{path}", f"'{path}' says what the model learns from, not how; a search varies "
                       "model.*, training.*, task, device or max_runtime_s")
    close = [p for p in known if p.split(".")[-1] == path.split(".")[-1]] or \
        difflib.get_close_matches(path, known, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
        f"; searchable fields: {', '.join(known)}"
    raise _invalid(f"space.{path}", f"'{path}' is not a field of the job spec{hint}")


def _with(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The base spec with each dotted path set to its value."""
    spec: dict[str, Any] = json.loads(json.dumps(base))
    for path, value in params.items():
        *parents, leaf = path.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec


def _candidates(param: Any) -> list[Any]:
    """The values that stand for a parameter when checking it: every choice, or a range's ends (and, for a float
    range, its midpoint, which an integer field refuses)."""
    if isinstance(param, ChoiceParam):
        return list(param.values)
    if isinstance(param, FloatParam):
        return [param.low, param.high, (param.low + param.high) / 2 + 1e-9]
    return [param.low, param.high]


def _check_value(base: dict[str, Any], path: str, value: Any) -> None:
    """422 naming space.<path> when the job spec's schema refuses `value` at `path`."""
    try:
        JobCreate.model_validate(_with(base, {path: value}))
    except ValidationError as exc:
        parts = tuple(path.split("."))
        errors = [e for e in exc.errors() if tuple(str(p) for p in e["loc"][:len(parts)]) == parts] or exc.errors()
        message = errors[0]["msg"]
        raise _invalid(f"space.{path}", f"{json.dumps(value)} is not a value of {path}: {message}") from None


def distributions(request: SearchCreate) -> dict[str, BaseDistribution]:
    """The space as Optuna distributions (choices as their JSON text); 422 naming the parameter at fault."""
    found: dict[str, BaseDistribution] = {}
    for path, param in request.space.items():
        field = f"space.{path}"
        if isinstance(param, ChoiceParam):
            texts = [json.dumps(v, sort_keys=True) for v in param.values]
            if len(set(texts)) != len(texts):
                raise _invalid(f"{field}.values", "a value is listed more than once")
            found[path] = CategoricalDistribution(texts)
            continue
        if request.sampler == "grid":
            raise _invalid(field, "a grid search tries every combination of choices; give this parameter "
                           '{"type": "choice", "values": [...]}, or use sampler random or tpe for a range')
        if param.low > param.high:
            raise _invalid(f"{field}.low", f"low ({param.low}) is above high ({param.high})")
        if param.log and param.low <= 0:
            raise _invalid(f"{field}.low", f"a log range needs low above 0; got {param.low}")
        if isinstance(param, FloatParam):
            found[path] = FloatDistribution(param.low, param.high, log=param.log)
        else:
            if param.log and param.step != 1:
                raise _invalid(f"{field}.step", "a log range of integers takes step 1")
            if (param.high - param.low) % param.step:
                raise _invalid(f"{field}.high", f"high - low ({param.high - param.low}) must be a multiple of step "
                               f"({param.step})")
            found[path] = IntDistribution(param.low, param.high, log=param.log, step=param.step)
    return found


def grid_size(request: SearchCreate) -> int:
    return math.prod(len(p.values) for p in request.space.values() if isinstance(p, ChoiceParam))


def _first_values(request: SearchCreate) -> dict[str, Any]:
    return {path: _candidates(param)[0] for path, param in request.space.items()}


def _relabel(exc: ServiceError, space: dict[str, Any], varied: str | None = None) -> ServiceError:
    """A job-spec error found on a trial's spec, renamed to the search field it comes from: space.<path> for a
    searched field (or `varied`, the parameter being checked), spec.<field> for the base spec."""
    errors = []
    for err in exc.errors or [{"message": exc.detail}]:
        field = str(err.get("field") or "")
        owner = next((p for p in space if field == p or field.startswith(p + ".")), varied)
        errors.append({**err, "field": f"space.{owner}" if owner else f"spec.{field}" if field else "spec"})
    return type(exc)(exc.detail, errors=errors, headers=exc.headers)


def check(*, session: Session, request: SearchCreate, principal: Principal, settings: Settings) -> str:
    """Every rule a search must meet before it starts; answers the task. 422 names the field at fault."""
    base = request.spec.model_dump(mode="json", exclude_unset=True)
    for path in request.space:
        _check_path(path)
    distributions(request)
    for path, param in request.space.items():
        for value in _candidates(param):
            _check_value(base, path, value)
    first = _first_values(request)
    try:
        _, stored = jobs.check(session=session, spec=JobCreate.model_validate(_with(base, first)),
                               principal=principal, settings=settings)
    except (InvalidInput, NotFound) as exc:
        raise _relabel(exc, request.space) from None
    # Each parameter's every value (the others at their first), through the whole job check: the data set, the
    # rules between fields, the server's limits and the network's size.
    for path, param in request.space.items():
        for value in _candidates(param)[1:] if not isinstance(param, FloatParam) else _candidates(param)[1:2]:
            try:
                jobs.check(session=session, spec=JobCreate.model_validate(_with(base, {**first, path: value})),
                           principal=principal, settings=settings)
            except InvalidInput as exc:
                raise _relabel(exc, request.space, varied=path) from None
    allowed = metric_names(stored.task, split="val")
    if request.metric not in allowed:
        raise _invalid("metric", f"'{request.metric}' is not a validation metric of {stored.task}; use one of "
                       f"{', '.join(allowed)}")
    budget = request.budget
    if request.sampler != "grid" and budget.trials is None and budget.max_wall_s is None:
        raise _invalid("budget", "give budget.trials, budget.max_wall_s or both")
    if request.sampler == "grid" and grid_size(request) > 1000:
        raise _invalid("space", f"the grid has {grid_size(request):,} combinations; this server runs at most 1000 "
                       "trials per search: give fewer choices or use sampler random or tpe")
    if budget.max_wall_s is not None and budget.max_wall_s > settings.max_runtime_s:
        raise _invalid("budget.max_wall_s", f"{budget.max_wall_s} s; this server accepts at most "
                       f"{settings.max_runtime_s} s")
    if request.parallelism > settings.max_active_jobs:
        raise _invalid("parallelism", f"{request.parallelism} trials at once; this server runs at most "
                       f"{settings.max_active_jobs} queued or running jobs per owner")
    return stored.task


# ---------------------------------------------------------------- create, look up, list, label, cancel


def create(*, session: Session, request: SearchCreate, principal: Principal, settings: Settings) -> Search:
    """Check the request, store the search and queue its first trials."""
    task = check(session=session, request=request, principal=principal, settings=settings)
    active = session.scalar(select(func.count()).select_from(Search).where(
        Search.owner == principal.owner, Search.status == SearchStatus.RUNNING)) or 0
    if active >= MAX_ACTIVE_SEARCHES:
        raise TooManyRequests(f"{principal.owner} already has {active} running searches, the most this server "
                              "accepts; wait for one to finish or cancel it")
    stored = request.model_dump(mode="json", exclude={"name", "tags", "notes"})
    stored["spec"] = request.spec.model_dump(mode="json", exclude_unset=True)
    search = Search(id=queue.new_id("srch"), owner=principal.owner, dataset_id=request.spec.dataset_id,
                    name=request.name, tags=list(request.tags), notes=request.notes, status=SearchStatus.RUNNING,
                    spec=stored, task=task)
    session.add(search)
    session.flush()
    drive(session=session, search=search, settings=settings)
    return search


def get(*, session: Session, search_id: str, principal: Principal) -> Search:
    """The search with this id, or NotFound (also when it belongs to another owner)."""
    search = session.get(Search, search_id)
    if search is None or not can_see(principal, search.owner):
        raise NotFound(f"no search with id '{search_id}'; GET /searches lists them",
                       errors=[{"field": "search_id", "message": "unknown search"}])
    return search


def list_(*, session: Session, principal: Principal, status: SearchStatus | None, tag: str | None,
          name: str | None, limit: int, offset: int) -> tuple[list[Search], int]:
    """A page of the caller's searches (every one for an admin), newest first, optionally filtered."""
    query = select(Search) if principal.admin else select(Search).where(Search.owner == principal.owner)
    if status is not None:
        query = query.where(Search.status == status)
    if tag is not None:
        query = query.where(jobs.has_tag(Search.tags, tag))
    if name is not None:
        query = query.where(Search.name == name)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(Search.created_at.desc(), Search.id).limit(limit).offset(offset)).all()
    return list(rows), int(total or 0)


def update_labels(*, session: Session, search: Search, labels: LabelsUpdate) -> Search:
    """PATCH a search's name, tags or notes: the fields given replace the stored ones."""
    for field in labels.model_fields_set:
        setattr(search, field, getattr(labels, field) if field != "tags" else list(labels.tags or []))
    search.updated_at = utcnow()
    session.flush()
    return search


def cancel(*, session: Session, search: Search, settings: Settings) -> Search:
    """running → cancelled: queued trials are cancelled at once, running ones stopped through their jobs' cancel."""
    now = utcnow()
    done = _rowcount(session, update(Search).where(Search.id == search.id, Search.status == SearchStatus.RUNNING)
                     .values(status=SearchStatus.CANCELLED, error="cancelled by request", finished_at=now,
                             updated_at=now))
    session.refresh(search)
    if not done:
        raise Conflict(f"search {search.id} is already {search.status}; only a running search can be cancelled")
    _stop_trials(session, search)
    drive(session=session, search=search, settings=settings)
    webhooks.search_finished(session=session, owner=search.owner,
                             view=to_read(session, search, leaderboard=False))
    return search


def _rowcount(session: Session, statement: Any) -> int:
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return result.rowcount


def _stop_trials(session: Session, search: Search) -> None:
    for job in session.scalars(select(Job).where(Job.search_id == search.id,
                                                 Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))):
        _cancel_job(session, job)


def _cancel_job(session: Session, job: Job) -> None:
    with contextlib.suppress(Conflict):  # it ended meanwhile; the next round records how
        queue.request_cancel(session=session, job=job)


# ---------------------------------------------------------------- the driver


def _budget_trials(search: Search) -> int:
    """How many trials the search may create in all."""
    request = search.spec
    trials = request["budget"].get("trials")
    if request["sampler"] == "grid":
        size = math.prod(len(p["values"]) for p in request["space"].values())
        return min(trials or size, size)
    return int(trials) if trials is not None else 1000


def _direction(search: Search) -> Literal["minimize", "maximize"]:
    given = search.spec.get("direction")
    if given in ("minimize", "maximize"):
        return "minimize" if given == "minimize" else "maximize"
    return "minimize" if search.spec["metric"] in LOWER_IS_BETTER else "maximize"


def _trials(session: Session, search: Search) -> list[SearchTrial]:
    return list(session.scalars(select(SearchTrial).where(SearchTrial.search_id == search.id)
                                .order_by(SearchTrial.number)).all())


def _histories(session: Session, trials: list[SearchTrial], metric: str) -> dict[int, dict[int, float]]:
    """Per trial number, its job's per-epoch metric."""
    numbers = {t.job_id: t.number for t in trials if t.job_id is not None}
    found: dict[int, dict[int, float]] = {}
    for job_id, epoch, figures in session.execute(
            select(EpochMetric.job_id, EpochMetric.epoch, EpochMetric.metrics)
            .where(EpochMetric.job_id.in_(list(numbers))).order_by(EpochMetric.epoch)):
        value = figures.get(metric)
        if isinstance(value, int | float) and math.isfinite(value):
            found.setdefault(numbers[job_id], {})[epoch] = float(value)
    return found


def _pruner(search: Search) -> optuna.pruners.BasePruner:
    spec = search.spec.get("pruner")
    if not spec:
        return optuna.pruners.NopPruner()
    if spec["type"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec["startup_trials"],
                                           n_warmup_steps=spec["warmup_epochs"])
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, spec["warmup_epochs"]),
                                                  reduction_factor=spec["reduction_factor"])


def _sampler(search: Search, number: int) -> optuna.samplers.BaseSampler:
    # Seeded per trial number: two drivers asking for trial n from the same rows get the same parameters.
    seed = (int(search.spec["seed"]) * 1_000_003 + number) % 2**32
    if search.spec["sampler"] == "tpe":
        # constant_liar: the trials still running count as (pessimistic) observations, so parallel trials spread
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=5)
    return optuna.samplers.RandomSampler(seed=seed)


def _space(search: Search) -> dict[str, BaseDistribution]:
    return distributions(SearchCreate.model_validate({**search.spec, "spec": {"dataset_id": "x"}}))


def _encode(dists: dict[str, BaseDistribution], params: dict[str, Any]) -> dict[str, Any]:
    return {p: json.dumps(v, sort_keys=True) if isinstance(dists[p], CategoricalDistribution) else v
            for p, v in params.items()}


def _decode(dists: dict[str, BaseDistribution], params: dict[str, Any]) -> dict[str, Any]:
    return {p: json.loads(v) if isinstance(dists[p], CategoricalDistribution) else v for p, v in params.items()}


def _study(search: Search, trials: list[SearchTrial], histories: dict[int, dict[int, float]],
           number: int) -> optuna.Study:
    """An in-memory Optuna study holding every trial row (with its per-epoch metric), rebuilt from the database."""
    dists = _space(search)
    pruner = _pruner(search)
    study = optuna.create_study(direction=_direction(search), sampler=_sampler(search, number), pruner=pruner)
    for trial in trials:
        params = _encode(dists, trial.params)
        steps = histories.get(trial.number, {})
        if trial.state in (TrialState.COMPLETE, TrialState.RUNNING):
            study.add_trial(create_trial(state=OptunaState.RUNNING, params=params, distributions=dists,
                                         intermediate_values=steps))
            if trial.state == TrialState.COMPLETE and trial.value is not None:
                # successive halving keeps its rungs on the trials it has judged: judge it once, as it ran
                if steps:
                    pruner.prune(study, study.trials[-1])
                study.tell(len(study.trials) - 1, trial.value)
        elif trial.state == TrialState.PRUNED:
            study.add_trial(create_trial(state=OptunaState.PRUNED, params=params, distributions=dists,
                                         intermediate_values=steps, value=trial.value))
        else:
            study.add_trial(create_trial(state=OptunaState.FAIL, params=params, distributions=dists))
    return study


def _suggest(search: Search, trials: list[SearchTrial], histories: dict[int, dict[int, float]],
             number: int) -> dict[str, Any]:
    """Parameters for trial `number`: the grid's next point, or the sampler's suggestion given every trial so far."""
    space = search.spec["space"]
    if search.spec["sampler"] == "grid":
        points = list(itertools.product(*(p["values"] for p in space.values())))
        order = list(range(len(points)))
        random.Random(int(search.spec["seed"])).shuffle(order)
        return dict(zip(space, points[order[number]], strict=True))
    dists = _space(search)
    study = _study(search, trials, histories, number)
    return _decode(dists, study.ask(fixed_distributions=dists).params)


def _set_trial(session: Session, trial: SearchTrial, state: TrialState, **values: Any) -> None:
    """A running trial's end, as one guarded UPDATE (another driver may have recorded it first)."""
    _rowcount(session, update(SearchTrial).where(SearchTrial.id == trial.id, SearchTrial.state == TrialState.RUNNING)
              .values(state=state, finished_at=utcnow(), **values))


def _sync(session: Session, search: Search, trials: list[SearchTrial], by_id: dict[str, Job]) -> None:
    """Record the end of every trial whose job ended."""
    metric = search.spec["metric"]
    for trial in trials:
        job = by_id.get(trial.job_id or "")
        if trial.state != TrialState.RUNNING or job is None:
            continue
        if job.status == JobStatus.SUCCEEDED:
            value = ((job.result or {}).get("metrics") or {}).get(metric)
            if isinstance(value, int | float) and math.isfinite(value):
                _set_trial(session, trial, TrialState.COMPLETE, value=float(value))
            else:
                _set_trial(session, trial, TrialState.FAILED,
                           error=f"the job's kept model reports no {metric} (is validation_fraction 0?)")
        elif job.status == JobStatus.FAILED:
            _set_trial(session, trial, TrialState.FAILED, error=job.error)
        elif job.status == JobStatus.CANCELLED:
            _set_trial(session, trial, TrialState.CANCELLED, error=job.error)


def _prune(session: Session, search: Search, trials: list[SearchTrial], by_id: dict[str, Job]) -> None:
    """Ask the pruner about every running trial with new epochs; a pruned one's job is cancelled."""
    running = [t for t in trials if t.state == TrialState.RUNNING and t.job_id in by_id
               and by_id[t.job_id].status == JobStatus.RUNNING]
    if not search.spec.get("pruner") or not running:
        return
    histories = _histories(session, trials, search.spec["metric"])
    study = _study(search, trials, histories, len(trials))
    pruner = _pruner(search)
    frozen = study.trials
    for trial in running:
        steps = histories.get(trial.number)
        if steps and pruner.prune(study, frozen[trial.number]):
            _set_trial(session, trial, TrialState.PRUNED, value=steps[max(steps)],
                       error=f"pruned after epoch {max(steps)} ({search.spec['pruner']['type']})")
            _cancel_job(session, by_id[trial.job_id or ""])
            log.info("search %s: pruned trial %d after epoch %d", search.id, trial.number, max(steps))


def _principal(search: Search) -> Principal:
    # The search's own owner, who was allowed its data set when the search was checked.
    return Principal(key_id=f"search:{search.id}", owner=search.owner, admin=True)


def _start_trial(session: Session, search: Search, trials: list[SearchTrial], number: int,
                 settings: Settings) -> None:
    """Insert trial `number` and its job in this transaction (a racing driver's duplicate fails at the insert)."""
    params = _suggest(search, trials, _histories(session, trials, search.spec["metric"]), number)
    trial = SearchTrial(search_id=search.id, number=number, params=params, state=TrialState.RUNNING)
    session.add(trial)
    session.flush()  # IntegrityError here: another driver created trial `number` first
    try:
        spec = JobCreate.model_validate(_with(search.spec["spec"], params))
        dataset, stored = jobs.check(session=session, spec=spec, principal=_principal(search), settings=settings)
    except (ValidationError, InvalidInput, NotFound) as exc:
        trial.state, trial.finished_at = TrialState.FAILED, utcnow()
        trial.error = exc.detail if isinstance(exc, ServiceError) else str(exc.errors()[0]["msg"])
        session.flush()
        trials.append(trial)
        return
    job = queue.enqueue(session=session, owner=search.owner, dataset_id=dataset.id, spec=stored)
    job.search_id, job.name, job.tags = search.id, f"{search.name or search.id} #{number}", list(search.tags)
    trial.job_id = job.id
    session.flush()
    trials.append(trial)


def drive(*, session: Session, search: Search, settings: Settings) -> None:
    """One round for one search: record ended trials, prune, stop at the budget, queue new trials, and end the
    search when nothing is left to run. Safe to run in any number of processes at once."""
    trials = _trials(session, search)
    job_ids = [t.job_id for t in trials if t.job_id is not None]
    by_id = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))} if job_ids else {}
    _sync(session, search, trials, by_id)
    if search.status == SearchStatus.RUNNING:
        session.expire_all()
        session.refresh(search)
        trials = _trials(session, search)
        _prune(session, search, trials, by_id)
        trials = _trials(session, search)
        elapsed = (utcnow() - search.created_at).total_seconds()
        max_wall_s = search.spec["budget"].get("max_wall_s")
        out_of_time = max_wall_s is not None and elapsed >= max_wall_s
        if out_of_time:
            _stop_trials(session, search)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        budget = _budget_trials(search)
        if not out_of_time:
            free = settings.max_active_jobs - jobs.active_jobs(session=session, owner=search.owner)
            wanted = min(int(search.spec["parallelism"]) - running, budget - len(trials), free)
            for number in range(len(trials), len(trials) + max(wanted, 0)):
                _start_trial(session, search, trials, number, settings)
            running = sum(t.state == TrialState.RUNNING for t in trials)
        if running == 0 and (out_of_time or len(trials) >= budget):
            _record_best(session, search)
            _finish(session, search, trials, settings)
    _record_best(session, search)


def _finish(session: Session, search: Search, trials: list[SearchTrial], settings: Settings) -> None:
    """running → succeeded (a trial completed) or failed (none did), once no trial runs; with refit, the best
    configuration's job on all rows is queued in the same transaction (by the driver whose update won)."""
    completed = any(t.state == TrialState.COMPLETE for t in trials)
    refit = completed and bool(search.spec.get("refit"))
    if refit and jobs.active_jobs(session=session, owner=search.owner) >= settings.max_active_jobs:
        return  # the refit waits for a free slot like any trial
    error = None if completed else next((f"no trial completed; trial {t.number}: {t.error}" for t in trials
                                         if t.error), "no trial completed")
    now = utcnow()
    won = _rowcount(session, update(Search).where(Search.id == search.id, Search.status == SearchStatus.RUNNING)
                    .values(status=SearchStatus.SUCCEEDED if completed else SearchStatus.FAILED, error=error,
                            finished_at=now, updated_at=now))
    session.refresh(search)
    if won and refit:
        _start_refit(session, search, next(t for t in trials if t.number == search.best_trial), settings)
    if won:
        webhooks.search_finished(session=session, owner=search.owner,
                                 view=to_read(session, search, leaderboard=False))
    log.info("search %s %s after %d trials", search.id, search.status, len(trials))


def _start_refit(session: Session, search: Search, best: SearchTrial, settings: Settings) -> None:
    """Queue the best trial's configuration on every row: no validation or test split; a single network trains
    for the epochs the best trial kept, with nothing held out to stop on (an ensemble cross-fits as before)."""
    job = session.get(Job, best.job_id) if best.job_id else None
    if job is None:
        return
    params = dict(best.params)
    kept = int((job.result or {}).get("best_epoch") or job.epoch or 1)
    if job.spec.get("model", {}).get("type") != "ensemble":
        params |= {"training.validation_fraction": 0.0, "training.epochs": kept,
                   "training.early_stopping_patience": 0}
    params["training.test_fraction"] = 0.0
    try:
        spec = JobCreate.model_validate(_with(search.spec["spec"], params))
        dataset, stored = jobs.check(session=session, spec=spec, principal=_principal(search), settings=settings)
    except (ValidationError, InvalidInput, NotFound) as exc:
        log.warning("search %s: the refit of trial %d cannot run (%s)", search.id, best.number, exc)
        return
    refit = queue.enqueue(session=session, owner=search.owner, dataset_id=dataset.id, spec=stored)
    refit.search_id, refit.name, refit.tags = search.id, f"{search.name or search.id} refit", list(search.tags)
    search.refit_job_id = refit.id
    session.flush()


def _ranked(search: Search, trials: list[SearchTrial]) -> list[SearchTrial]:
    """Trials with a metric, best first: complete ones, then pruned ones."""
    sign = 1.0 if _direction(search) == "minimize" else -1.0
    scored = [t for t in trials if t.value is not None and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return sorted(scored, key=lambda t: (t.state != TrialState.COMPLETE, sign * (t.value or 0.0), t.number))


def _record_best(session: Session, search: Search) -> None:
    ranked = [t for t in _ranked(search, _trials(session, search)) if t.state == TrialState.COMPLETE]
    best = ranked[0] if ranked else None
    model_id = session.scalar(select(Job.model_id).where(Job.id == best.job_id)) if best and best.job_id else None
    number = best.number if best else None
    if (search.best_trial, search.model_id) != (number, model_id):
        search.best_trial, search.model_id, search.updated_at = number, model_id, utcnow()
        session.flush()


def unsettled(session: Session) -> list[str]:
    """Searches the driver must visit: running ones, and ended ones with trials whose jobs have not ended yet."""
    return list(session.scalars(select(Search.id).where(or_(
        Search.status == SearchStatus.RUNNING,
        Search.id.in_(select(SearchTrial.search_id).where(SearchTrial.state == TrialState.RUNNING))))).all())


def drive_all(*, sessions: sessionmaker[Session], settings: Settings) -> None:
    """One round over every unsettled search, each in its own transaction."""
    with session_scope(sessions) as session:
        ids = unsettled(session)
    for search_id in ids:
        try:
            with session_scope(sessions) as session:
                search = session.get(Search, search_id)
                if search is not None:
                    drive(session=session, search=search, settings=settings)
        except (IntegrityError, OperationalError) as exc:
            # another driver took the same step first (or held the lock); the next round starts from its rows
            log.info("search %s: round skipped (%s)", search_id, type(exc).__name__)


class Driver:
    """A background thread in each API process: one `drive_all` round every `every_s` seconds (at most 1 s, so
    that a worker finishing a trial soon finds the next one queued). A failed round is logged and retried with
    backoff; the thread never dies of it."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self.every_s = min(DRIVE_EVERY_S, settings.reap_every_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlps-searches", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        backoff = Backoff(cap_s=30.0)
        delay = self.every_s
        while not self._stop.wait(delay):
            try:
                drive_all(sessions=self.sessions, settings=self.settings)
            except Exception as exc:
                delay = backoff.failed()
                log.warning("search round failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                continue
            if backoff.succeeded():
                log.info("search driver recovered")
            delay = self.every_s


# ---------------------------------------------------------------- views


def _trial_read(trial: SearchTrial, job: Job | None) -> TrialRead:
    duration = None
    if job is not None and job.started_at and job.finished_at:
        duration = (job.finished_at - job.started_at).total_seconds()
    return TrialRead(number=trial.number, state=trial.state, params=trial.params, value=trial.value,
                     job_id=trial.job_id, job_status=job.status if job else None, epochs=job.epoch if job else 0,
                     duration_s=duration, error=trial.error, created_at=trial.created_at,
                     finished_at=trial.finished_at)


def trials(*, session: Session, search: Search) -> list[TrialRead]:
    """Every trial, in order."""
    rows = _trials(session, search)
    by_id = _jobs_of(session, rows)
    return [_trial_read(t, by_id.get(t.job_id or "")) for t in rows]


def _jobs_of(session: Session, rows: list[SearchTrial]) -> dict[str, Job]:
    ids = [t.job_id for t in rows if t.job_id]
    return {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))} if ids else {}


def to_read(session: Session, search: Search, *, leaderboard: bool) -> SearchRead:
    """The API view: progress against the budget, the best trial, and (on request) the leaderboard."""
    rows = _trials(session, search)
    by_id = _jobs_of(session, rows)
    ranked = [_trial_read(t, by_id.get(t.job_id or "")) for t in _ranked(search, rows)]
    best = next((t for t in ranked if t.state == "complete"), None)
    end: datetime = search.finished_at or utcnow()
    budget = search.spec["budget"]
    return SearchRead(
        id=search.id, status=search.status, name=search.name, tags=list(search.tags or []),
        notes=search.notes, dataset_id=search.dataset_id, task=search.task, sampler=search.spec["sampler"],
        metric=search.spec["metric"], direction=_direction(search), spec=search.spec,
        progress=SearchProgress(
            trials_done=sum(t.state in ENDED for t in rows), trials_running=sum(t.state == TrialState.RUNNING
                                                                                for t in rows),
            trials_budget=_budget_trials(search) if budget.get("trials") or search.spec["sampler"] == "grid"
            else None,
            elapsed_s=round((end - search.created_at).total_seconds(), 3), max_wall_s=budget.get("max_wall_s")),
        best=best, model_id=search.model_id, refit_job_id=search.refit_job_id,
        refit_model_id=session.scalar(select(Job.model_id).where(Job.id == search.refit_job_id))
        if search.refit_job_id else None,
        leaderboard=ranked if leaderboard else None, error=search.error,
        created_at=search.created_at, finished_at=search.finished_at)


def fingerprint(view: SearchRead, trials: list[TrialRead]) -> str:
    """What changes when a search moves (for its event stream): its status, best model and every trial's state and
    epochs."""
    return json.dumps([view.status, view.model_id, [(t.number, t.state, t.epochs) for t in trials]])
