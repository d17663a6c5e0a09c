FROM python:3.11.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY producers producers
COPY consumers consumers
COPY sagas sagas
COPY dlq dlq
COPY sagaline sagaline
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT []
