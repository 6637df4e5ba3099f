# The service's image. It runs the README's own commands and nothing else:
#   docker compose --profile demo up   -> make demo (the simulator and the real dataflow, offline)
#   docker compose --profile live up   -> python -m bytewax.run flows.main (Binance, pipelines.yaml)
# `make install` is the README's install step (a .venv with the dev tools, so `make test` works in
# the container too). No Docker engine runs where this project is developed and tested: the
# commands below are the tested ones, this file is linted (hadolint), not built, in CI.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/app/.venv/bin:$PATH

# make runs the README's commands; gcc builds the optional C speedups (market_data/_speedups.c;
# without it the same Python code runs, slower). Debian's own versions of these are fine.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 app

WORKDIR /app
COPY --chown=app:app . .
USER 10001
RUN make install

# /health, /ready, /metrics and /book/<SYMBOL>; HEALTH_HOST=0.0.0.0 makes them reachable.
ENV HEALTH_HOST=0.0.0.0
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=2)"]

# SIGTERM stops the flow gracefully: sinks flush, shared memory is unlinked.
STOPSIGNAL SIGTERM
CMD ["make", "demo"]
