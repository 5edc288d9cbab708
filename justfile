# lab: every recipe runs inside the locked environment (uv run --locked ...).

set shell := ["bash", "-euo", "pipefail", "-c"]
# recipe arguments reach commands as "$@", each one word as typed: overrides such as
# 'seed=${threads}', 'seed=choice(1,2)' or 'tracking.experiment=my exp' stay intact
set positional-arguments

uv := "uv run --locked"
jobs := `python3 -c 'import os; print(min(4, os.cpu_count() or 1))'`

# list the recipes
default:
    @just --list

# install the locked environment (with dev tools) and the git pre-commit hook
setup:
    uv sync --locked
    {{uv}} pre-commit install

# one training run; overrides pass through, e.g. `just train model.C=0.5 data=wine`
train *ARGS:
    {{uv}} python -m lab.train "$@"

# a seed × C grid on worker processes forked from the launcher, one per CPU (at most 4); extra overrides pass through
sweep *ARGS:
    {{uv}} python -m lab.train --multirun seed=1,2,3 model.C=0.01,0.1,1,10 hydra.launcher.n_jobs={{jobs}} "$@"

# fast tests (skips slow and browser tests); one pytest worker per CPU, at most 4
test *ARGS:
    {{uv}} pytest -n {{jobs}} "$@"

# every test, including slow (Ray, PostgreSQL, concurrency) and e2e (Chromium) ones; lists the slowest
test-all *ARGS:
    {{uv}} pytest -n {{jobs}} -m "" --durations=20 "$@"

# ruff lint and format check
lint:
    {{uv}} ruff check .
    {{uv}} ruff format --check .

# format and autofix
fmt:
    {{uv}} ruff format .
    {{uv}} ruff check --fix .

# mypy --strict over src/, tests/ and bench/
typecheck:
    {{uv}} mypy

# every pre-commit hook over the whole tree (offline: all hooks are local)
pre-commit:
    {{uv}} pre-commit run --all-files

# the MLflow UI on the local store, on 127.0.0.1 only
ui port="5000":
    {{uv}} mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port {{port}}

# an MLflow tracking server on 127.0.0.1 that proxies artifacts (embedded sqlite backend)
server port="5000":
    {{uv}} mlflow server --backend-store-uri sqlite:///mlflow.db --artifacts-destination ./mlruns --serve-artifacts --host 127.0.0.1 --port {{port}}

# the performance targets of issue 4 against a plain scikit-learn loop; writes BENCHMARKS.md
bench *ARGS:
    {{uv}} python bench/run.py "$@"

# build the container image (docker; else podman, e.g. `podman build --isolation chroot --pull=never -t lab:dev .`)
docker-build tag="lab:dev":
    $(command -v docker || command -v podman) build -t {{tag}} .

# train in the container; outputs/, mlflow.db and mlruns/ stay in this directory (mounted at the same path)
docker-run tag="lab:dev" *ARGS:
    $(command -v docker || command -v podman) run --rm --user "$(id -u):$(id -g)" -v "$PWD:$PWD" -w "$PWD" {{tag}} python -m lab.train "${@:2}"

# remove outputs, the local store and caches
clean:
    rm -rf outputs/runs outputs/sweeps outputs/reproductions mlflow.db mlflow.db-* mlflow.db.lock mlflow.db.creating mlruns .pytest_cache .mypy_cache .ruff_cache
    find . -name __pycache__ -type d -not -path './.venv/*' -prune -exec rm -rf {} +
