"""streamops trainer: each new dataset version → a model trained in a worker process,
registered in MLflow, judged by the quality gate, promoted."""
