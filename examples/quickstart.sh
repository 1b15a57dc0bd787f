#!/usr/bin/env bash
# The README's curl walkthrough: upload iris, train, watch, read metrics, predict.
# Usage: examples/quickstart.sh [CSV]   (server at $MLPS_URL, default http://127.0.0.1:8000;
# key from $MLPS_API_KEY, else the admin key `mlps serve` wrote to ${MLPS_DATA_DIR:-var}/admin.key)
set -euo pipefail
URL=${MLPS_URL:-http://127.0.0.1:8000}
AUTH="Authorization: Bearer ${MLPS_API_KEY:-$(cat "${MLPS_DATA_DIR:-var}/admin.key")}"
CSV=${1:-$(dirname "$0")/../../shared/datasets/iris.csv}
# One field of a JSON answer: text as it is (ids, statuses), anything else as JSON.
json() { python3 -c "import sys, json; v = json.load(sys.stdin)$1; print(v if isinstance(v, str) else json.dumps(v))"; }

DS=$(curl -fsS -H "$AUTH" -F file=@"$CSV" "$URL/datasets" | json '["id"]')
echo "dataset $DS"
JOB=$(curl -fsS -H "$AUTH" -X POST "$URL/jobs" -H 'content-type: application/json' \
  -d "{\"dataset_id\": \"$DS\", \"target\": \"species\"}" | json '["id"]')
echo "job $JOB"
for _ in $(seq 600); do
  STATUS=$(curl -fsS -H "$AUTH" "$URL/jobs/$JOB" | json '["status"]')
  case $STATUS in succeeded) break ;; failed|cancelled) echo "job $STATUS" >&2; exit 1 ;; esac
  sleep 0.5
done
[ "$STATUS" = succeeded ] || { echo "job still $STATUS" >&2; exit 1; }
curl -fsS -H "$AUTH" "$URL/jobs/$JOB/metrics" | json '["epochs"][-1]'
MODEL=$(curl -fsS -H "$AUTH" "$URL/jobs/$JOB" | json '["model_id"]')
curl -fsS -H "$AUTH" -X POST "$URL/predict" -H 'content-type: application/json' \
  -d "{\"model_id\": \"$MODEL\", \"records\": [{\"sepal_length\": 5.1, \"sepal_width\": 3.5, \"petal_length\": 1.4, \"petal_width\": 0.2}]}"
echo
