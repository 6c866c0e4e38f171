# The kubetune operator image: `kubetune operator` (kopf) with the cluster extra and torch's
# CPU build, which the bayesian and sobol strategies (and so the default, auto) need; without
# torch, auto would fall back to random search.
#
# Build from the repository root:
#   docker build -f operator.Dockerfile -t kubetune-operator:0.1.0 .
#
# Runs as uid 65532 with a read-only root filesystem (the chart's default): bytecode is compiled
# at build time and Python never writes beside its modules.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kubetune
WORKDIR /src
# pyproject.toml names the trainer package too, so its (pure Python) sources come along.
COPY pyproject.toml README.md constraints.txt ./
# The CPU wheel of the pinned torch (the default PyPI wheel would bring CUDA, gigabytes).
RUN /opt/kubetune/bin/pip install --index-url https://download.pytorch.org/whl/cpu \
      "torch==$(sed -n 's/^torch==//p' constraints.txt)"
COPY operator/kubetune/ operator/kubetune/
COPY trial-image/kubetune_trainer/ trial-image/kubetune_trainer/
# Every dependency at the version the tests ran with (constraints.txt).
RUN /opt/kubetune/bin/pip install --constraint constraints.txt ".[cluster]" \
 && /opt/kubetune/bin/python -m compileall -q /opt/kubetune \
 && /opt/kubetune/bin/kubetune operator --help > /dev/null

FROM ${PYTHON_IMAGE}
# uid 65532 has no passwd entry and no home: HOME points at the pod's writable /tmp.
ENV PATH=/opt/kubetune/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/kubetune /opt/kubetune
USER 65532:65532
WORKDIR /tmp
# /metrics (--metrics-port) and /healthz (--health-port).
EXPOSE 8080 8081
ENTRYPOINT ["kubetune"]
CMD ["operator"]
