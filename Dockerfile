# Two images from one file:
#   the coordinator (the default, last stage): `docker build -t swarm-coordinator .` then
#     docker run -p 50051:50051 -p 8000:8000 -v swarm-data:/data swarm-coordinator
#   a volunteer's GPU client: `docker build --target client-gpu -t swarmclient-gpu .` then
#     docker run --gpus all -v swarmclient:/data swarmclient-gpu --coordinator HOST:50051
# Build stage: turn the source into a wheel, so the runtime image carries no build tools.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocol protocol
COPY compression compression
COPY scheduler scheduler
COPY models models
COPY coordinator coordinator
COPY client client
RUN pip wheel --no-deps --wheel-dir /wheels .

# The GPU client: PyPI's Linux torch wheels bring the CUDA runtime libraries with them, and the
# NVIDIA container toolkit (`--gpus all`) supplies the driver; no coordinator dependencies.
FROM python:3.11-slim AS client-gpu
ARG GPU_TORCH_SPEC=torch
RUN pip install --no-cache-dir "${GPU_TORCH_SPEC}"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/swarmclient-*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 swarm && mkdir /data && chown swarm /data
USER swarm
VOLUME /data
ENV SWARM_DATA_DIR=/data SWARM_CONFIG_DIR=/data/config
ENTRYPOINT ["swarmclient", "join", "--no-live"]

# Runtime stage: the wheel with its coordinator extra, run by an unprivileged user.
FROM python:3.11-slim AS coordinator
# Point PIP_EXTRA_INDEX_URL at a CPU-only PyTorch index to keep the image small.
ARG TORCH_SPEC=torch==2.13.0
ARG PIP_EXTRA_INDEX_URL=
RUN pip install --no-cache-dir "${TORCH_SPEC}"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/swarmclient-*.whl)[coordinator]" && rm -rf /wheels \
    && useradd --create-home --uid 10001 swarm && mkdir /data && chown swarm /data
USER swarm
VOLUME /data
EXPOSE 50051 8000
HEALTHCHECK --interval=30s --timeout=5s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
ENTRYPOINT ["swarm", "coordinator", "--host", "0.0.0.0", "--data-dir", "/data"]
