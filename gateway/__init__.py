"""streamops gateway: the HTTP face (FastAPI under gunicorn): predict, ingest, promote and
roll back, batch jobs, health and metrics."""
