# One image for every process: web (gunicorn), workers, beat and flower.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib

RUN groupadd --system app && useradd --system --gid app --home-dir /app app \
    && mkdir -p /data/media && chown -R app:app /data

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY --chown=app:app . .
# collectstatic needs settings to load; these values exist only for this build
# step and are not in the final environment.
RUN DEBUG=0 SECRET_KEY=collectstatic-only-build-step EMAIL_URL=dummy:// DATA_DIR=/tmp/build-data \
    python manage.py collectstatic --noinput --verbosity 0

USER app
EXPOSE 8000
CMD ["gunicorn", "-c", "config/gunicorn.py", "config.wsgi:application", "--bind", "0.0.0.0:8000"]
