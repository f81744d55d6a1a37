# GPU images: the conda environment of environment.yml on a CUDA host, in two targets.
#   instructor (the default): the whole repository (solutions, autograder, quiz bank), for instructors and graders
#     docker build -t optcourse .
#     docker run --gpus all optcourse make gpu-run                        # the GPU runner (labs + lectures, cuda)
#   student: built from the student distribution (make student-dist), never from the repository
#     docker build --target student -t optcourse-student build/student-dist/advanced-model-optimization
#   both: docker run --gpus all -p 127.0.0.1:8888:8888 IMAGE            # JupyterLab (token printed)
# CUDA libraries come with the wheels (torch, tensorrt-cu13, onnxruntime-gpu); the host provides
# the NVIDIA driver through the NVIDIA Container Toolkit.
FROM mambaorg/micromamba:2.3.3-ubuntu24.04 AS environment

USER root
# apt packages follow the pinned Ubuntu release of the base image; exact apt versions would break
# the build whenever Ubuntu publishes a security update (hadolint's DL3008)
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends make git build-essential \
    && rm -rf /var/lib/apt/lists/*
USER $MAMBA_USER

WORKDIR /home/$MAMBA_USER/course
# pip (also the one micromamba runs for environment.yml's pip section) keeps no wheel cache: the
# CUDA wheels would otherwise stay in the image a second time, several GB
ENV PIP_NO_CACHE_DIR=1
COPY --chown=$MAMBA_USER:$MAMBA_USER environment.yml requirements/ ./requirements-src/
RUN micromamba install -y -n base -f requirements-src/environment.yml && micromamba clean --all --yes

# Offline by design: models ship with the repository and its packages; caches stay in the workspace.
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 PROFILE=cuda ENV_READY=1
EXPOSE 8888
# inside the container JupyterLab listens on all interfaces; publish it on the host's loopback only
CMD ["bash", "-lc", "make lab IP=0.0.0.0 PORT=8888"]

FROM environment AS student
COPY --chown=$MAMBA_USER:$MAMBA_USER . .
ARG MAMBA_DOCKERFILE_ACTIVATE=1
# the build context must be the student distribution: a repository context would put every solution
# into the students' image
RUN if [ -e solutions ]; then echo "build the student image from build/student-dist/<course>, not the repository" >&2; exit 1; fi \
    && pip install --no-deps -e .

FROM environment AS instructor
COPY --chown=$MAMBA_USER:$MAMBA_USER . .
ARG MAMBA_DOCKERFILE_ACTIVATE=1
RUN pip install --no-deps -e .
