# The image the KubeRay manifests (deploy/kuberay/) and cluster.yaml's docker section run:
#
# image: registry.example.com/bert-batch-pipeline:0.1.0-ray2.60.0-py311-cu128
#
#   docker build -t registry.example.com/bert-batch-pipeline:0.1.0-ray2.60.0-py311-cu128 .
#   docker push registry.example.com/bert-batch-pipeline:0.1.0-ray2.60.0-py311-cu128
#
# The tag says what is inside: this project's version, the Ray of the base image (the same Ray that
# cluster.yaml pins and the tests run), its Python and the CUDA of the base image and of torch's wheel.
# Put your registry in place of registry.example.com here, in deploy/kuberay/*.yaml and in cluster.yaml
# (tests/unit/test_kuberay_manifests.py checks that the four agree).

# Ray 2.60.0 on Python 3.11 (Ubuntu, CUDA 12.8 + cuDNN), user `ray`, HOME /home/ray, Python in
# /home/ray/anaconda3. Ray itself is already installed: `pip install .` keeps it (ray[data]>=2.60,<2.61, the same 2.60.0).
FROM rayproject/ray:2.60.0-py311-cu128

# torch first, from PyTorch's CUDA 12.8 index (the base image's CUDA), so that the project's install
# finds it already satisfied and does not pull another build.
RUN pip install --no-cache-dir "torch>=2.6,<2.14" --index-url https://download.pytorch.org/whl/cu128

# The repository, less what .dockerignore leaves out, at /home/ray/pipeline: the entrypoints run
# `python -m pipeline run jobs/<spec>.yaml` from here (KubeRay starts Ray, and so the job's driver, in
# the container's working directory). Made by `ray`, so that pip can build the package in it.
RUN mkdir -p /home/ray/pipeline
WORKDIR /home/ray/pipeline
COPY --chown=ray:users . .
# The package and its runtime dependencies; no [test] or [demo] extras.
RUN pip install --no-cache-dir . && python -c "import pipeline, torch, ray; print(ray.__version__, torch.__version__)"
