"""MLflow: logging runs (`mlflow_runs`) and a local tracking server (`mlflow_server`)."""
