# torchcycle: the pipeline, the retraining flows and the dashboard on CPU PyTorch, in one image.
#   docker build -t torchcycle .
#   docker run --rm -p 127.0.0.1:8501:8501 torchcycle                         # the dashboard, on this host only
#   docker run --rm -v "$PWD:/app" torchcycle dvc repro                       # the pipeline on a checkout
#   docker run --rm -v "$PWD:/app" torchcycle python -m pipelines.schedule    # the retraining schedule
#   docker run --rm -v "$PWD:/app" torchcycle torchcycle predict --task adult --input rows.csv
# BASE_IMAGE and TORCH_PIP_ARGS let an offline machine build from a locally bootstrapped base and a
# local wheel directory (deploy/build-offline.sh); the defaults are the public ones.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    TORCHCYCLE_ROOT=/app

# git: DVC and the provenance tags need it. Versions follow Debian bookworm's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git make \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 torchcycle \
    && useradd --uid 10001 --gid 10001 --create-home torchcycle

WORKDIR /app

# The same two steps as `make venv`: CPU torch 2.13.0 first, on its own, then everything else under the
# lock in requirements/constraints.txt. Dependencies sit in their own layer, cached until the lock or
# pyproject.toml changes; the project's code comes after.
# (pinned: the linter cannot see the version past the variable)
# hadolint ignore=DL3013
RUN pip install ${TORCH_PIP_ARGS} torch==2.13.0
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md ./
RUN mkdir -p src/torchcycle \
    && touch src/torchcycle/__init__.py \
    && pip install -c requirements/constraints.txt '.[pretrained]' \
    && pip uninstall -y torchcycle \
    && rm -rf src
COPY --chown=10001:10001 . .
RUN pip install --no-deps -c requirements/constraints.txt -e . \
    && chown -R 10001:10001 /app

USER 10001:10001
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=40s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]

# The dashboard; inside the container it listens on all interfaces so a published port reaches it.
CMD ["streamlit", "run", "dashboards/app.py", "--server.headless", "true", "--server.address", "0.0.0.0", \
     "--server.port", "8501", "--browser.gatherUsageStats", "false"]
