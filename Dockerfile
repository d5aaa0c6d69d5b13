# syntax=docker/dockerfile:1
# Two images from one file (docker-compose.yml builds both):
#   docker build -t dicom-node .                              the node (target "node", the last)
#   docker build --target orthanc -t dicom-node-orthanc .     Orthanc with orthanc/'s routing
# Both run on Debian 12 (bookworm), as the project's machines and tests do.

# ---- Orthanc 1.10 from Debian's package: the version the tests run ------------------------------
FROM debian:bookworm-slim AS orthanc
ENV TCP_NODELAY=1
# policy-rc.d: the package must not try to start its service while the image is built
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      orthanc orthanc-dicomweb curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rm -rf /etc/orthanc && mkdir -p /etc/orthanc /var/lib/orthanc/db \
 && chown orthanc:orthanc /var/lib/orthanc/db
# orthanc.json + docker.json (a password for remote HTTP) + route.lua; compose mounts the folder
COPY orthanc/orthanc.json orthanc/docker.json orthanc/route.lua /etc/orthanc/
ENV ORTHANC_STORAGE=/var/lib/orthanc/db
USER orthanc
VOLUME /var/lib/orthanc/db
EXPOSE 4242 8042
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD curl -fsS -u "demo:${ORTHANC_PASSWORD:-demo}" http://127.0.0.1:8042/system >/dev/null || exit 1
ENTRYPOINT ["/usr/sbin/Orthanc"]
CMD ["/etc/orthanc/"]

# ---- the node -----------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS node
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 TCP_NODELAY=1
# dcmtk: echoscu for the health check, storescu/dcmdump for operators (call them as /usr/bin/...:
# pynetdicom installs its own echoscu/storescu into /usr/local/bin, which comes first in PATH)
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dcmtk \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/dicom-node
# torch first, as the CPU-only wheel from PyTorch's CPU index (PyPI's Linux wheel is the CUDA
# build, several GB). For a GPU host, build with --build-arg TORCH_INDEX_URL=<a CUDA index>.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0
COPY pyproject.toml README.md ./
COPY node/ node/
COPY config/ config/
COPY models/ models/
# Editable: the node finds config/deid/ and models/ beside its source folder.
RUN pip install -e ".[postgres]" \
 && python -c "import node, torch, pydicom, pynetdicom" \
 && if [ ! -f models/brain-tumor-demo/vgg16_tumor.pt ]; then \
      python models/brain-tumor-demo/convert.py; \
    fi
RUN useradd --system --create-home --home-dir /var/lib/dicom-node dicom-node
ENV DICOM_NODE__NODE__VAR_DIR=/var/lib/dicom-node
USER dicom-node
VOLUME /var/lib/dicom-node
EXPOSE 11112
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD /usr/bin/echoscu -aet HEALTHCHECK -aec DICOM_NODE 127.0.0.1 11112 || exit 1
ENTRYPOINT ["dicom-node"]
CMD ["serve"]
