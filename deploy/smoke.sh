#!/usr/bin/env bash
# Smoke test of a running MLP Service stack: upload the iris data set, train a small MLP,
# wait for the job to succeed, and check one prediction.
#
# Usage: deploy/smoke.sh
# Environment:
#   MLPS_URL        base URL of the API (default http://127.0.0.1:8000)
#   MLPS_API_KEY    the key to send (default: MLPS_ADMIN_KEY, the stack's preset admin key, else the
#                   admin key the api container wrote to /data/admin.key, read with `docker compose exec`)
#   MLPS_SMOKE_CSV  CSV to upload (default: shared/datasets/iris.csv beside the repository)
#   MLPS_SMOKE_TIMEOUT  seconds to wait for training (default 300)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${MLPS_URL:-http://127.0.0.1:8000}
BASE=${BASE%/}
CSV=${MLPS_SMOKE_CSV:-$ROOT/../shared/datasets/iris.csv}
TIMEOUT=${MLPS_SMOKE_TIMEOUT:-300}

log() { printf '[smoke] %s\n' "$*"; }
die() { printf '[smoke] FAILED: %s\n' "$*" >&2; exit 1; }

# json_get FIELD: read a JSON object on stdin and print one top-level field.
json_get() {
  python3 -c 'import json, sys
value = json.load(sys.stdin).get(sys.argv[1])
print("" if value is None else json.dumps(value) if isinstance(value, (dict, list)) else value)' "$1"
}

[[ -f $CSV ]] || die "no such file: $CSV"
KEY=${MLPS_API_KEY:-${MLPS_ADMIN_KEY:-}}
if [[ -z $KEY ]] && command -v docker >/dev/null; then
  KEY=$(cd "$ROOT" && docker compose exec -T api cat /data/admin.key 2>/dev/null) || KEY=""
fi
[[ -n $KEY ]] || die "no API key: set MLPS_API_KEY (docker compose exec api cat /data/admin.key shows the admin key)"
AUTH="Authorization: Bearer $KEY"

log "API: $BASE"
curl -fsS "$BASE/healthz" >/dev/null || die "$BASE/healthz did not answer 200"
# ready once a worker has started and sent its first heartbeat (a worker host may take a while: it warms up torch)
ready=""
for _ in $(seq 1 120); do
  if ready=$(curl -sS "$BASE/readyz") && [[ $ready == *'"ready"'* ]]; then break; fi
  sleep 1
done
[[ $ready == *'"ready"'* ]] || die "$BASE/readyz did not answer ready within 120 s: $ready"

log "uploading $CSV"
dataset=$(curl -fsS -H "$AUTH" -F "file=@$CSV" "$BASE/datasets") || die "upload failed"
dataset_id=$(json_get id <<<"$dataset")
[[ -n $dataset_id ]] || die "upload answered no dataset id: $dataset"
log "data set $dataset_id ($(json_get n_rows <<<"$dataset") rows)"

job_body=$(python3 -c 'import json, sys
print(json.dumps({"dataset_id": sys.argv[1], "target": "species", "training": {"epochs": 30}}))' "$dataset_id")
job=$(curl -fsS -H "$AUTH" -H 'Content-Type: application/json' -d "$job_body" "$BASE/jobs") || die "job submission failed"
job_id=$(json_get id <<<"$job")
[[ -n $job_id ]] || die "job submission answered no job id: $job"
log "job $job_id submitted"

deadline=$((SECONDS + TIMEOUT))
status=""
while :; do
  job=$(curl -fsS -H "$AUTH" "$BASE/jobs/$job_id") || die "GET /jobs/$job_id failed"
  new_status=$(json_get status <<<"$job")
  if [[ $new_status != "$status" ]]; then
    status=$new_status
    log "job $job_id: $status"
  fi
  case $status in
    succeeded) break ;;
    failed | cancelled) die "job $job_id ended $status: $(json_get error <<<"$job")" ;;
  esac
  ((SECONDS < deadline)) || die "job $job_id not done within $TIMEOUT s (status $status)"
  sleep 1
done
model_id=$(json_get model_id <<<"$job")
[[ -n $model_id ]] || die "job $job_id succeeded without a model id: $job"
log "model $model_id, kept model's metrics: $(json_get metrics <<<"$job")"

predict_body=$(python3 -c 'import json, sys
print(json.dumps({"model_id": sys.argv[1], "records": [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}))' "$model_id")
answer=$(curl -fsS -H "$AUTH" -H 'Content-Type: application/json' -d "$predict_body" "$BASE/predict") || die "predict failed"
prediction=$(python3 -c 'import json, sys
print(json.load(sys.stdin)["predictions"][0])' <<<"$answer") || die "unexpected predict answer: $answer"
log "prediction for (5.1, 3.5, 1.4, 0.2): $prediction"
[[ $prediction == "Iris-setosa" ]] || die "expected Iris-setosa, got $prediction"
log "passed"
