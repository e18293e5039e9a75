# convstream's server, and from the same image its dashboard, on Debian 12's Python 3.11.
#
#   docker build -t convstream .
#   docker run --rm -p 127.0.0.1:50051:50051 -p 127.0.0.1:9464:9464 convstream
#
# Inside the container the server listens on 0.0.0.0 (CONVSTREAM_HOST below): the port
# mapping decides who reaches it, here this host alone. docs/production.md, "In a container",
# has the config file, cameras, the dashboard, TLS and tokens.
FROM debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /opt/convstream \
    && /opt/convstream/bin/pip install --no-cache-dir --disable-pip-version-check /src

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        convstream
COPY --from=build /opt/convstream /opt/convstream
ENV PATH=/opt/convstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CONVSTREAM_HOST=0.0.0.0 \
    CONVSTREAM_METRICS_HOST=0.0.0.0
USER convstream
# gRPC, then /metrics, /healthz and /readyz
EXPOSE 50051 9464
# ready once the model is warm and the cameras have started; a server that listens on
# another metrics port, or none, replaces this (docker run --no-healthcheck)
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/readyz', timeout=2)"]
ENTRYPOINT ["convstream"]
CMD ["serve"]
