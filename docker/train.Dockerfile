# GPU training image: `docker build -f docker/train.Dockerfile -t mdr-train .`
# then e.g. `docker run --gpus all -v $PWD/runs:/work/runs mdr-train mdr preprocess ...`
FROM nvidia/cuda:12.3.2-cudnn9-runtime-ubuntu22.04
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /work
COPY setup.py constraints.txt Makefile README.md ./
COPY pipeline pipeline
COPY mdr_keras mdr_keras
COPY serving serving
COPY benchmarks benchmarks
RUN python3.11 -m venv /opt/mdr && /opt/mdr/bin/pip install --no-cache-dir -c constraints.txt \
    "tensorflow[and-cuda]==2.16.2" -e .
ENV PATH=/opt/mdr/bin:$PATH TF_USE_LEGACY_KERAS=1
ENTRYPOINT []
CMD ["mdr", "--help"]
