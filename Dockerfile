# torchcycle image: the pipeline and its command line on CPU PyTorch.
# Build: docker build -t torchcycle .      Run the pipeline: docker run --rm -v "$PWD:/work" torchcycle
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

# git: DVC and the provenance tags need it; make: the project's targets
RUN apt-get update \
    && apt-get install -y --no-install-recommends git make \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 torchcycle

WORKDIR /opt/torchcycle

# CPU torch first, pinned, so nothing later pulls a CUDA build; then the locked dependencies.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md ./
COPY src src
RUN pip install -c requirements/constraints.txt .

USER torchcycle
WORKDIR /work
CMD ["dvc", "repro"]
