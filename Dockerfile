# syntax=docker/dockerfile:1
#
# One image for every role: `notifier api` (the default), `notifier worker`, `notifier migrate`.
#
#   docker build -t notifier:local .
#   docker run --rm -e NOTIFIER_DATABASE_URL=... -e NOTIFIER_REDIS_URL=... -e NOTIFIER_API_KEYS=... -p 8000:8000 notifier:local
#
# Both stages must use the same Python image: the virtual environment's interpreter is a symlink
# to the base image's /usr/local/bin/python3.11.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: resolve nothing, install exactly uv.lock into /app/.venv ---------------------------
FROM ${PYTHON_IMAGE} AS builder

ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when uv.lock or pyproject.toml change.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-editable --no-install-project

# Then the project itself, installed as a wheel (not editable): the wheel carries the top-level
# migrations/ as notifier/store/migrations, so the runtime stage needs nothing but the venv.
COPY pyproject.toml uv.lock README.md ./
COPY migrations ./migrations
COPY notifier ./notifier
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# --- runtime: the venv, a non-root user, nothing else ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 notifier \
    && useradd --system --uid 10001 --gid notifier --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin notifier

# Owned by root and read-only for the service user: the code cannot be changed by the process running it.
COPY --from=builder /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /app
USER 10001:10001
EXPOSE 8000

ENTRYPOINT ["notifier"]
CMD ["api", "--host", "0.0.0.0"]
