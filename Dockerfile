# email-reconciler: multi-stage build on a slim Python base; the final image has no compiler, no
# pip cache and no build tools, and runs as an unprivileged user (uid 10001).
#   docker build -t ghcr.io/email-reconciler/email-reconciler:0.1.0 .

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
# Wheels only: a dependency that would need compiling fails the build instead of pulling in gcc.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --only-binary=:all: /wheels/*.whl \
 && /opt/venv/bin/pip uninstall -y pip setuptools \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM python:3.12-slim
LABEL org.opencontainers.image.title="email-reconciler" \
      org.opencontainers.image.description="GitOps for outbound e-mail accounts" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 reconciler \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin reconciler \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["email-reconciler"]
CMD ["controller", "--metrics-addr=:8080"]
