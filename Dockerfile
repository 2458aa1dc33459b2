# The pool-monitor app (demo CRUD + monitor) for docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# .dockerignore keeps the build context to what `pip install .` needs.
COPY . .
RUN pip install . && rm -rf /src

# Installed into the system site-packages as root, run as an unprivileged user.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
USER app
WORKDIR /home/app

# Production limits (pool-monitor serve's defaults, stated here): a request head must arrive
# within 10 s, idle keep-alive connections close after 5 s, bodies above 1 MiB get 413, client
# connections are capped below the open-files limit (MONITOR_MAX_CONNECTIONS=0 derives it).
# /healthz, /readyz and /metrics answer any Host (kubelet probes, Prometheus pod discovery).
ENV MONITOR_HEADER_TIMEOUT_S=10 \
    MONITOR_KEEP_ALIVE_S=5 \
    MONITOR_MAX_BODY_BYTES=1048576 \
    MONITOR_MAX_CONNECTIONS=0

EXPOSE 8000
# Liveness only (/healthz needs no database); slim images have no curl, Python does it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

CMD ["pool-monitor", "serve", "--host", "0.0.0.0", "--port", "8000"]
