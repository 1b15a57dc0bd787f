"""Test-set quality of the service's DEFAULT model vs careful scikit-learn / LightGBM baselines, through the real API.

Data sets: every CSV in shared/datasets except xor.csv (its 4 rows leave no test split), with the target:
iris → species, breast_cancer → diagnosis, diabetes → progression (regression), fair → affair, anes96 → vote,
randhie → mdvis (regression), macrodata → unemp (regression); plus real public data sets that ship inside PyPI
packages (no network at run time):
- wine: scikit-learn `sklearn.datasets.load_wine` (178 rows, 3 cultivars, integer labels 0/1/2 → `cultivar`);
- digits: scikit-learn `sklearn.datasets.load_digits` (1,797 8×8 images as 64 pixel columns, 10 classes, integer
  labels → `digit`);
- penguins: `palmerpenguins.load_penguins` (344 rows, 3 species; missing values; string columns island, sex);
- cars: `vega_datasets.local_data.cars` (regression of Miles_per_Gallon; the 8 rows without it are dropped, so is
  the identifier column Name; missing Horsepower; string Origin; Year as an ISO date string);
- seattle_weather: `vega_datasets.local_data.seattle_weather` (1,461 days, 5 imbalanced classes of `weather`;
  the `date` column is kept as the ISO string the CSV holds);
- grunfeld: statsmodels `statsmodels.datasets.grunfeld.load_pandas` (220 firm-years, regression of `invest`;
  string column firm).
Each is written to a CSV in a temp folder at run time; rows whose target is missing are dropped.

Per set: an 80/20 split (sklearn `train_test_split(test_size=0.2, random_state=0)`, stratified on the target for
classification), train and test written as CSV. One real `mlps serve --devices cpu` gets the train CSV uploaded
once; per seed a job with ONLY `{"dataset_id", "target", "training": {"seed": s}}` (everything else the service's
defaults, task picked by the service) is timed from submit to succeeded (one warm-up job on iris beforehand pays
for the worker's start and counts nowhere). The test rows minus the target then go through `POST /predict` (JSON
records, NaN as null, at most 1000 per request) and are scored: accuracy for classification (predicted and true
labels compared as strings, integral floats written as integers), R² for regression.

Baselines, fit on the same train CSV read by pandas and scored on the same test rows, each a Pipeline of a
ColumnTransformer (numeric columns: SimpleImputer(median) + StandardScaler; columns pandas reads as strings
(object / str dtype): SimpleImputer(most_frequent) + OneHotEncoder(handle_unknown="ignore")) and one model:
LogisticRegression(max_iter=1000) / Ridge(); MLPClassifier / MLPRegressor(hidden_layer_sizes=(64, 64),
max_iter=1000, random_state=seed; the regressor inside TransformedTargetRegressor with a StandardScaler on the
target); HistGradientBoostingClassifier / Regressor(random_state=0); LightGBM LGBMClassifier / LGBMRegressor(
verbose=-1, random_state=0). Each baseline's time is the pipeline's `fit` alone. Rounds interleave: for each seed
r, our job with seed r, then every baseline once (the MLP with random_state=r). Scores are the mean over rounds
(only the sklearn MLP varies by seed), times the median; the ratio ours/MLP-fit is the median of per-round ratios
(our time is everything from submit to succeeded, sklearn's is `fit` alone). A job that fails is recorded with
its error and the run goes on.

Usage: python bench/quality.py [--sets iris,wine,...] [--seeds 0,1,2] [--json PATH]
"""

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, Server, markdown_table, median, run_job, upload  # noqa: E402

PREDICT_BATCH = 1000
JOB_TIMEOUT_S = 900.0
BASELINES = ["LogReg/Ridge", "MLP(64,64)", "HistGB", "LightGBM"]


def _shared(name: str) -> Callable[[], pd.DataFrame]:
    return lambda: pd.read_csv(DATASETS / f"{name}.csv")


def _wine() -> pd.DataFrame:
    from sklearn.datasets import load_wine

    return load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})


def _digits() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    return load_digits(as_frame=True).frame.rename(columns={"target": "digit"})


def _penguins() -> pd.DataFrame:
    from palmerpenguins import load_penguins

    return load_penguins()


def _cars() -> pd.DataFrame:
    from vega_datasets import local_data

    frame = local_data.cars().drop(columns=["Name"])
    frame["Year"] = frame["Year"].dt.strftime("%Y-%m-%d")
    return frame


def _seattle_weather() -> pd.DataFrame:
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    return frame


def _grunfeld() -> pd.DataFrame:
    from statsmodels.datasets import grunfeld

    return grunfeld.load_pandas().data


@dataclass(frozen=True)
class DataSet:
    name: str
    target: str
    task: str  # classification | regression
    source: str
    load: Callable[[], pd.DataFrame]


SETS = {s.name: s for s in [
    DataSet("iris", "species", "classification", "shared/datasets/iris.csv", _shared("iris")),
    DataSet("breast_cancer", "diagnosis", "classification", "shared/datasets/breast_cancer.csv",
            _shared("breast_cancer")),
    DataSet("diabetes", "progression", "regression", "shared/datasets/diabetes.csv", _shared("diabetes")),
    DataSet("fair", "affair", "classification", "shared/datasets/fair.csv", _shared("fair")),
    DataSet("anes96", "vote", "classification", "shared/datasets/anes96.csv", _shared("anes96")),
    DataSet("randhie", "mdvis", "regression", "shared/datasets/randhie.csv", _shared("randhie")),
    DataSet("macrodata", "unemp", "regression", "shared/datasets/macrodata.csv", _shared("macrodata")),
    DataSet("wine", "cultivar", "classification", "scikit-learn `sklearn.datasets.load_wine`", _wine),
    DataSet("digits", "digit", "classification", "scikit-learn `sklearn.datasets.load_digits`", _digits),
    DataSet("penguins", "species", "classification", "`palmerpenguins.load_penguins`", _penguins),
    DataSet("cars", "Miles_per_Gallon", "regression", "`vega_datasets.local_data.cars` (Name dropped)", _cars),
    DataSet("seattle_weather", "weather", "classification", "`vega_datasets.local_data.seattle_weather`",
            _seattle_weather),
    DataSet("grunfeld", "invest", "regression", "statsmodels `statsmodels.datasets.grunfeld.load_pandas`",
            _grunfeld),
]}

SOURCES = """The sets beyond shared/datasets ship inside PyPI packages and load without a network: **wine**
(scikit-learn `load_wine`: 178 rows, 13 numeric features, 3 cultivars as integer labels) and **digits**
(scikit-learn `load_digits`: 1,797 8×8 images as 64 pixel columns, 10 classes as integer labels);
**penguins** (`palmerpenguins.load_penguins`: 344 rows, 3 species, missing values, string columns island and sex);
**cars** (`vega_datasets.local_data.cars`: regression of Miles_per_Gallon, rows without it and the identifier Name
dropped, missing Horsepower, string Origin, Year as a date string); **seattle_weather**
(`vega_datasets.local_data.seattle_weather`: 1,461 days, 5 imbalanced weather classes, a date string column);
**grunfeld** (statsmodels `datasets.grunfeld`: 220 firm-years, regression of invest, string column firm).
xor.csv (4 rows) is left out: it has no test split."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def label(value: Any) -> str:
    """A class label as a string, the same whether it arrives as 3, 3.0, np.int64(3) or "3"."""
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON records with NaN as null and plain Python numbers."""
    return json.loads(frame.to_json(orient="records", double_precision=15))


def task_words(ds: DataSet, y: pd.Series) -> str:
    if ds.task == "regression":
        return "regression, R²"
    k = y.nunique()
    return f"{'binary' if k == 2 else f'{k}-class'}, accuracy"


# ---------------------------------------------------------------- baselines


def features_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Numeric columns as float, string (object / str) columns as object with NaN for missing."""
    frame = frame.copy()
    categorical = [c for c in frame.columns if not is_numeric_dtype(frame[c])]
    numeric = [c for c in frame.columns if c not in categorical]
    for c in numeric:
        frame[c] = frame[c].astype(float)
    for c in categorical:
        frame[c] = frame[c].astype(object).where(frame[c].notna(), np.nan)
    return frame, numeric, categorical


def preprocessor(numeric: list[str], categorical: list[str]) -> ColumnTransformer:
    parts = []
    if numeric:
        parts.append(("num", Pipeline([("impute", SimpleImputer(strategy="median")),
                                       ("scale", StandardScaler())]), numeric))
    if categorical:
        parts.append(("cat", Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                                       ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))]),
                      categorical))
    return ColumnTransformer(parts)


def baseline_models(task: str, seed: int) -> dict[str, Any]:
    from lightgbm import LGBMClassifier, LGBMRegressor

    if task == "classification":
        return {"LogReg/Ridge": LogisticRegression(max_iter=1000),
                "MLP(64,64)": MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=1000, random_state=seed),
                "HistGB": HistGradientBoostingClassifier(random_state=0),
                "LightGBM": LGBMClassifier(verbose=-1, random_state=0)}
    return {"LogReg/Ridge": Ridge(),
            "MLP(64,64)": TransformedTargetRegressor(
                regressor=MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=1000, random_state=seed),
                transformer=StandardScaler()),
            "HistGB": HistGradientBoostingRegressor(random_state=0),
            "LightGBM": LGBMRegressor(verbose=-1, random_state=0)}


def fit_baselines(task: str, seed: int, X_train: pd.DataFrame, y_train: pd.Series, X_test: pd.DataFrame,
                  y_test: pd.Series) -> dict[str, dict[str, Any]]:
    Xtr, numeric, categorical = features_frame(X_train)
    Xte, _, _ = features_frame(X_test)
    out = {}
    for name, model in baseline_models(task, seed).items():
        pipe = Pipeline([("pre", preprocessor(numeric, categorical)), ("model", model)])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.filterwarnings("ignore", message="X does not have valid feature names")
                t0 = time.perf_counter()
                pipe.fit(Xtr, y_train)
                fit_s = time.perf_counter() - t0
                pred = pipe.predict(Xte)
            if task == "classification":
                score = float(np.mean([label(p) == t for p, t in zip(pred, y_test, strict=True)]))
            else:
                score = float(r2_score(y_test, pred))
            out[name] = {"score": score, "fit_s": fit_s}
        except Exception as exc:  # recorded, the run goes on
            out[name] = {"score": None, "fit_s": None, "error": f"{type(exc).__name__}: {exc}"}
    return out


# ---------------------------------------------------------------- ours


def predict(http, model_id: str, rows: list[dict[str, Any]]) -> list[Any]:
    predictions: list[Any] = []
    for i in range(0, len(rows), PREDICT_BATCH):
        r = http.post("/predict", json={"model_id": model_id, "records": rows[i:i + PREDICT_BATCH]})
        if r.status_code >= 400:
            raise RuntimeError(f"/predict {r.status_code}: {r.text[:500]}")
        predictions += r.json()["predictions"]
    return predictions


def cancel_unfinished(http) -> None:
    """After a job timed out: cancel whatever is still queued or running so the next one starts clean."""
    for status in ("running", "queued"):
        try:
            for job in http.get("/jobs", params={"status": status, "limit": 100}).json().get("items", []):
                http.post(f"/jobs/{job['id']}/cancel")
        except Exception as exc:
            log(f"  could not cancel {status} jobs: {exc}")


def ours(http, ds: DataSet, dataset_id: str, seed: int, test_rows: list[dict[str, Any]],
         y_test: pd.Series) -> dict[str, Any]:
    spec = {"dataset_id": dataset_id, "target": ds.target, "training": {"seed": seed}}
    result: dict[str, Any] = {"seed": seed, "score": None, "wall_s": None}
    try:
        wall, job = run_job(http, spec, timeout=JOB_TIMEOUT_S, interval=0.05)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TimeoutError):
            cancel_unfinished(http)
        return result
    result.update(wall_s=wall, job_id=job["id"], model_id=job["model_id"], service_task=job.get("task"),
                  epochs=job.get("progress", {}).get("epoch"), job_duration_s=job.get("duration_s"),
                  job_result=job.get("result"))
    if job.get("task") != ds.task:
        result["note"] = f"service chose task {job.get('task')!r}, expected {ds.task!r}"
    try:
        pred = predict(http, job["model_id"], test_rows)
        if ds.task == "classification":
            result["score"] = float(np.mean([label(p) == t for p, t in zip(pred, y_test, strict=True)]))
        else:
            values = [p[0] if isinstance(p, list) else p for p in pred]
            result["score"] = float(r2_score(y_test, np.asarray(values, dtype=float)))
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


# ---------------------------------------------------------------- one data set


def prepare(ds: DataSet, folder: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Write the whole set, read it back as the CSV says, drop rows without a target, split 80/20, write both."""
    full = folder / f"{ds.name}.csv"
    ds.load().to_csv(full, index=False)
    frame = pd.read_csv(full)
    frame = frame[frame[ds.target].notna()].reset_index(drop=True)
    stratify = frame[ds.target] if ds.task == "classification" else None
    train, test = train_test_split(frame, test_size=0.2, random_state=0, stratify=stratify)
    train_path = folder / f"{ds.name}_train.csv"
    train.to_csv(train_path, index=False)
    test.to_csv(folder / f"{ds.name}_test.csv", index=False)
    # read back so both sides see exactly the dtypes of the CSVs
    return train_path, pd.read_csv(train_path), pd.read_csv(folder / f"{ds.name}_test.csv")


def run_set(http, ds: DataSet, seeds: list[int], folder: Path) -> dict[str, Any]:
    train_path, train, test = prepare(ds, folder)
    out: dict[str, Any] = {"name": ds.name, "target": ds.target, "task": ds.task, "source": ds.source,
                           "rows": len(train) + len(test), "train_rows": len(train), "test_rows": len(test),
                           "task_words": task_words(ds, pd.concat([train[ds.target], test[ds.target]])),
                           "ours": [], "baselines": {name: [] for name in BASELINES}}
    X_train, X_test = train.drop(columns=[ds.target]), test.drop(columns=[ds.target])
    if ds.task == "classification":
        y_train = train[ds.target].map(label)
        y_test = test[ds.target].map(label)
    else:
        y_train, y_test = train[ds.target].astype(float), test[ds.target].astype(float)
    try:
        dataset_id = upload(http, train_path)["id"]
    except Exception as exc:
        out["error"] = f"upload: {type(exc).__name__}: {exc}"
        log(f"{ds.name}: upload failed: {exc}")
        dataset_id = None
    test_rows = records(X_test)
    for seed in seeds:
        if dataset_id is not None:
            mine = ours(http, ds, dataset_id, seed, test_rows, y_test)
        else:
            mine = {"seed": seed, "score": None, "wall_s": None, "error": out["error"]}
        out["ours"].append(mine)
        log(f"{ds.name} seed {seed}: ours {_fmt(mine['score'])} in {_fmt(mine['wall_s'], 1)} s"
            + (f", epochs {mine.get('epochs')}" if mine.get("epochs") is not None else "")
            + (f" ERROR {mine['error']}" if mine.get("error") else "")
            + (f" NOTE {mine['note']}" if mine.get("note") else ""))
        theirs = fit_baselines(ds.task, seed, X_train, y_train, X_test, y_test)
        for name, figures in theirs.items():
            out["baselines"][name].append({"seed": seed, **figures})
        log(f"{ds.name} seed {seed}: " + ", ".join(
            f"{name} {_fmt(f['score'])} ({_fmt(f['fit_s'], 2)} s)" for name, f in theirs.items()))
    return out


# ---------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    scores = [r["score"] for r in result["ours"] if r["score"] is not None]
    walls = [r["wall_s"] for r in result["ours"] if r["score"] is not None and r["wall_s"] is not None]
    base = {}
    for name, runs in result["baselines"].items():
        ok = [r["score"] for r in runs if r["score"] is not None]
        base[name] = statistics.fmean(ok) if ok else None
    mlp_fits = [r["fit_s"] for r in result["baselines"]["MLP(64,64)"] if r["fit_s"] is not None]
    ratios = [o["wall_s"] / m["fit_s"] for o, m in zip(result["ours"], result["baselines"]["MLP(64,64)"], strict=True)
              if o["score"] is not None and o["wall_s"] and m["fit_s"]]
    scored = {k: v for k, v in base.items() if v is not None}
    best = max(scored, key=scored.get) if scored else None
    mean = statistics.fmean(scores) if scores else None
    return {"ours_mean": mean, "ours_min": min(scores) if scores else None,
            "ours_spread": max(scores) - min(scores) if scores else None, "ours_ok": len(scores),
            "baselines": base, "best": best, "best_score": scored.get(best) if best else None,
            "gap": mean - scored[best] if mean is not None and best else None,
            "ours_wall_median_s": median(walls) if walls else None,
            "mlp_fit_median_s": median(mlp_fits) if mlp_fits else None,
            "ratio_ours_mlp_median": median(ratios) if ratios else None}


def report(results: list[dict[str, Any]], seeds: list[int]) -> str:
    rows = []
    gaps = []
    for result in results:
        s = result["summary"]
        failed = len(seeds) - s["ours_ok"]
        ours_mean = _fmt(s["ours_mean"]) + (f" ({failed} of {len(seeds)} failed)" if failed else "")
        best = f"{s['best']} {_fmt(s['best_score'])}" if s["best"] else "—"
        if s["gap"] is not None:
            gaps.append(s["gap"])
        rows.append([f"{result['name']} ({result['rows']:,}, {result['task_words']})", ours_mean, _fmt(s["ours_min"]),
                     _fmt(s["ours_spread"]), *(_fmt(s["baselines"][b]) for b in BASELINES), best,
                     "—" if s["gap"] is None else f"{s['gap']:+.3f}", _fmt(s["ours_wall_median_s"], 2),
                     _fmt(s["mlp_fit_median_s"], 2), _fmt(s["ratio_ours_mlp_median"], 2)])
    table = markdown_table(["data set (rows, task, metric)", "ours mean", "ours min", "ours seed spread (max−min)",
                            "LogReg/Ridge", "MLP(64,64)", "HistGB", "LightGBM", "best baseline",
                            "gap (ours mean − best)", "our job wall median (s)", "sklearn-MLP fit median (s)",
                            "ratio ours/MLP-fit"], rows)
    seeds_text = ",".join(str(s) for s in seeds)
    mean_gap = f"{statistics.fmean(gaps):+.3f}" if gaps else "—"
    below = sum(g < -0.02 for g in gaps)
    summary = (f"Seeds {seeds_text}. Mean gap (ours mean − best baseline) over {len(gaps)} sets: {mean_gap}; "
               f"sets more than 0.02 below the best baseline: {below} of {len(gaps)}.")
    errors = [f"- {r['name']} seed {o['seed']}: {o['error']}" for r in results for o in r["ours"] if o.get("error")]
    errors += [f"- {r['name']} seed {o['seed']}: {o['note']}" for r in results for o in r["ours"] if o.get("note")]
    errors += [f"- {r['name']} {name} seed {b['seed']}: {b['error']}" for r in results
               for name, runs in r["baselines"].items() for b in runs if b.get("error")]
    text = f"{table}\n\n{summary}\n"
    if errors:
        text += "\nProblems:\n\n" + "\n".join(errors) + "\n"
    return text + "\n" + SOURCES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of: " + ", ".join(SETS))
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds, one round each")
    ap.add_argument("--json", type=Path, help="write every raw figure here")
    args = ap.parse_args()
    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        ap.error(f"unknown sets {unknown}; choose from {', '.join(SETS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="mlps-quality-") as tmp, Server() as server, \
            server.client(timeout=120) as http:
        log(f"server at {server.url}; warm-up job")
        warm = upload(http, DATASETS / "iris.csv")
        try:
            run_job(http, {"dataset_id": warm["id"], "target": "species", "training": {"epochs": 1}}, timeout=300,
                    interval=0.05)
        except Exception as exc:  # the jobs below record their own errors
            log(f"warm-up job failed: {exc}")
        for name in names:
            t_set = time.perf_counter()
            result = run_set(http, SETS[name], seeds, Path(tmp))
            result["summary"] = summarise(result)
            result["elapsed_s"] = time.perf_counter() - t_set
            results.append(result)
            log(f"{name}: done in {result['elapsed_s']:.0f} s")
    total = time.perf_counter() - t0
    log(f"all done in {total:.0f} s")
    print(report(results, seeds))
    if args.json:
        args.json.write_text(json.dumps({"seeds": seeds, "total_s": total, "sets": results}, indent=1,
                                        default=str))


if __name__ == "__main__":
    main()
