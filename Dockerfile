# lab: a Hydra+MLflow experiment launcher for scikit-learn.
#
#   docker build -t lab:dev .          (or: podman build -t lab:dev .)
#   docker run --rm lab:dev            -> one training (python -m lab.train) in /work, as a non-root user
#
# The project lives at /app in every stage (/app/src, /app/conf, /app/uv.lock, /app/.venv) and is
# installed editable: lab.train finds its configs at parents[2]/"conf" and lab.provenance hashes
# parents[2]/"uv.lock", so the tree must keep that shape and that path.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- deps: the locked dependencies only
FROM ${PYTHON_IMAGE} AS deps

# uv from PyPI (no uv image is pulled); pinned so uv.lock is read the same way on every build.
ARG UV_VERSION=0.13.9
RUN python -m pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# Only pyproject.toml + uv.lock: this layer (and the runtime's copy of it) is reused until they change.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project \
 && ls -A .venv/lib/python3*/site-packages > /tmp/deps-site-packages.txt

# ---------------------------------------------------------------- builder: the project, editable
FROM deps AS builder

COPY README.md ./
COPY conf ./conf
COPY src ./src
# Install the project (editable: a .pth pointing at /app/src plus its dist-info), compile its bytecode
# (the runtime user cannot write /app), and stage what the project adds on top of the dependencies.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev \
 && python -m compileall -q src \
 && sp=$(echo .venv/lib/python3*/site-packages) \
 && mkdir -p "/stage/$sp" \
 && cp -a README.md pyproject.toml uv.lock conf src /stage/ \
 && ls -A "$sp" | grep -vxF -f /tmp/deps-site-packages.txt | xargs -r -I{} cp -a "$sp/{}" "/stage/$sp/" \
 && ls -A "/stage/$sp"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

RUN useradd --create-home --uid 10001 --user-group lab \
 && mkdir -p /work \
 && chown lab:lab /work

# Two layers: the dependencies (large, cached while uv.lock and pyproject.toml are unchanged),
# then the project (small, rebuilt when the code or configs change).
COPY --from=deps /app/.venv /app/.venv
COPY --from=builder /stage/ /app/

ENV PATH=/app/.venv/bin:$PATH \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# outputs/, mlflow.db and mlruns/ are written to the working directory
WORKDIR /work
USER lab

CMD ["python", "-m", "lab.train"]
