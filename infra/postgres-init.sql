-- One PostgreSQL, one database per service: Prefect and MLflow each keep their own Alembic
-- version table, and so does the registry.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE registry;
