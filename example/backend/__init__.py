"""Backend of the example application: versioned Celery apps and their tasks."""
