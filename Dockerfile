# syntax=docker/dockerfile:1
# One image for every role of Flash Promos Marketplace: web (the default command below), Celery worker,
# Celery beat and Flower. docker-compose.yml picks the role with `command:` and holds each role's healthcheck,
# so the image declares none (one HEALTHCHECK would be wrong for three of the four roles).
FROM python:3.11-slim

# PYTHONPATH: the celery and gunicorn entry points live in /usr/local/bin, so the project directory is put
# on the import path explicitly instead of relying on each tool adding the working directory.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONPATH=/app

WORKDIR /app

# Dependencies before code: this layer is rebuilt only when the lock file changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# The code stays owned by root and read-only to the process; only var/ (collected static files, the beat
# schedule) is writable by the unprivileged user the containers run as.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app
COPY . .
RUN mkdir -p var && chown app:app var
USER 10001:10001

# collectstatic loads settings but never connects to the database. With DJANGO_DEBUG off, settings refuse
# to load without DATABASE_URL and DJANGO_SECRET_KEY, so both get throwaway values for this one command
# only: they are not build arguments and never reach the image's environment.
RUN DJANGO_SECRET_KEY=collectstatic-build-only-not-a-secret \
    DATABASE_URL=postgres://collectstatic@localhost:5432/unused \
    python manage.py collectstatic --noinput

EXPOSE 8000
# --worker-tmp-dir: gunicorn's worker heartbeat file goes to memory, not to the container's overlay disk.
CMD ["gunicorn", "marketplace.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-"]
