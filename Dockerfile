# The image that cluster.yaml's docker section and the KubeRay manifests (deploy/kuberay/) run. Its full
# reference (registry, name and tag) is written in one place, deploy/IMAGE; from the
# repository root:
#
#   docker build -t "$(cat deploy/IMAGE)" . && docker push "$(cat deploy/IMAGE)"
#
# The tag says what is inside: this project's version, the Ray of the base image (the same Ray the tests
# run and the client that submits jobs must run), its Python and the CUDA of the base image and of
# torch's wheel. YAML cannot read another file, so cluster.yaml and deploy/kuberay/*.yaml spell the same
# reference out; to use your registry (here ghcr.io/acme), change all of them at once:
#
#   NEW=ghcr.io/acme/$(basename "$(cat deploy/IMAGE)")
#   sed -i "s#$(cat deploy/IMAGE)#$NEW#" cluster.yaml deploy/kuberay/*.yaml && echo "$NEW" > deploy/IMAGE
#
# tests/unit/test_deploy.py checks that they name exactly deploy/IMAGE's reference, and that this
# file's FROM is the base image its tag describes.

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
