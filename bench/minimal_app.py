"""The smallest FastAPI app that serves one trained model: the floor the service's /predict is compared with.

It loads the model folder once with the project's artifact loader and answers `POST /predict` with the same
preprocessing and inference code as the service, without the service's database lookup, model cache, request
validation models, middleware and metrics.

Usage: python bench/minimal_app.py MODEL_DIR --port PORT
"""

import argparse
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Body, FastAPI

from service.training import pipeline as P
from service.training.artifact import load_model
from service.training.features import records_to_table


def create_app(model_dir: str) -> FastAPI:
    net, meta = load_model(Path(model_dir))
    features = meta.preprocessing["features"]
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        X = P.inputs_from_table(records_to_table(body["records"], features), meta)
        return {"model_id": meta.model_id, **P.predict_inputs(net, meta, X)}

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(create_app(args.model_dir), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
