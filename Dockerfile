# chargegate: the production image. Configure with CHARGEGATE_* variables (see README).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/chargegate
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-deps -e . \
    && useradd --system --home-dir /srv/chargegate chargegate \
    && mkdir -p var && chown chargegate var

USER chargegate
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
# Run `chargegate migrate` once per release (e.g. as a job) before starting new replicas.
CMD ["chargegate", "serve", "--host", "0.0.0.0", "--port", "8000"]
