# sagaline's application image: the `sagaline` CLI and the saga's services.
# BASE is any Debian-like image with python3 (>= 3.11) and its venv module. The default is the
# official Python image; tools/containers/build-images.sh builds a registry-free one
# (sagaline/python:3.11) and compose.local.yaml passes it in.
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE}
# lets tools/containers/compose-demo.sh remove this image's earlier builds once they are untagged
LABEL io.sagaline.image=app
RUN python3 -m venv /opt/sagaline
ENV PATH=/opt/sagaline/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
# Dependencies first, in their own layer: a source change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
# The packages (.dockerignore lets nothing else in), in one layer.
COPY . .
RUN pip install --no-cache-dir --no-deps . && rm -rf /app/build
# State (logs, pid files) goes somewhere the unprivileged user may write.
ENV SAGALINE_STATE_DIR=/tmp/sagaline
USER nobody
ENTRYPOINT []
