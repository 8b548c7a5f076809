# One image for web, worker, beat: the command differs (see docker-compose.yml).
# DATA_DIR (/data) and the media volume are the desk user's only (0700): the named volume
# takes the owner and mode of /data/media from the image when it is first created. The desk's
# processes create their files 0600 (umask 077, set by manage.py, the WSGI module and Celery).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY servicedesk ./servicedesk
COPY integrations ./integrations
COPY records ./records
COPY mailworker ./mailworker
COPY templates ./templates
COPY manage.py Procfile ./
RUN pip install --no-cache-dir . \
    && useradd --system --home /data --uid 1000 desk \
    && mkdir -p /data/media && chown -R desk /data && chmod -R 700 /data \
    && DATA_DIR=/tmp/build SECRET_KEY=build-only-not-used-at-run-time-0123456789abcdefghij \
       python manage.py collectstatic --noinput \
    && mv /tmp/build/static /app/static && chmod -R a+rX /app/static && rm -rf /tmp/build
ENV STATIC_ROOT=/app/static
USER desk
EXPOSE 8000
CMD ["gunicorn", "servicedesk.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
