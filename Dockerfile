# The pool-monitor app (demo CRUD + monitor) for docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# .dockerignore keeps the build context to what `pip install .` needs. The plain install is all
# the image needs: it serves the database of DATABASE_URL (the `demo` extra adds the embedded
# PostgreSQL and the load generator, for `pool-monitor demo`, `load` and `selftest`).
COPY . .
RUN pip install . && rm -rf /src

# Installed into the system site-packages as root, run as an unprivileged user.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
USER app
WORKDIR /home/app

EXPOSE 8000
# Liveness only (/healthz needs no database); slim images have no curl, Python does it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

CMD ["pool-monitor", "serve", "--host", "0.0.0.0", "--port", "8000"]
