-- The MLflow database is created by the image (POSTGRES_DB); Prefect gets its own.
CREATE DATABASE prefect OWNER torchcycle;
