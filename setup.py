"""selfimprove: self-improvement post-training of language models in JAX."""

from setuptools import find_packages, setup

setup(
    name="selfimprove",
    version="0.1.0",
    description=("JAX-native self-improvement post-training (SCoRe, STP, self-judging) "
                 "with sampling, judging and the update in one compiled step."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["selfimprove", "selfimprove.*"]),
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.8",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "absl-py>=2.1",
        "ml-collections>=1.1",
        "tensorstore>=0.1.70",
        "numpy>=1.26",
        "chex>=0.1.90",
        "tensorboardX>=2.6",   # TensorBoard event files without TensorFlow
        "matplotlib>=3.8",     # training-curve plots
    ],
    extras_require={
        # NVIDIA GPUs: the CUDA 13 plugin (cuda12 for older drivers).
        "cuda": ["jax[cuda13]"],
        "cuda12": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
        "hf": ["safetensors>=0.4", "tokenizers>=0.20", "sentencepiece>=0.2",
               "jinja2>=3.1.6"],   # jinja2: chat templates
        # task.name="seqio" (selfimprove/tasks/seqio_task.py). Pulls TensorFlow, tensorflow-text
        # and tensorflow-datasets (about 2 GB installed), so it stays out of the default install.
        # Tested with seqio 0.0.20, tensorflow 2.21.0, tensorflow-text 2.21.1, numpy 2.4.6.
        "seqio": ["seqio"],
        # launch/sweep.py --executor=slurm (the local executor needs nothing extra).
        "sweep": ["submitit>=1.5.4,<2"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            # Peer baselines and, later, logits-parity tests. Pinned: a plain
            # `torch` pulls a multi-GB CUDA build.
            "torch==2.13.0",
            "transformers>=4.50",
            "safetensors>=0.4",
            "tokenizers>=0.20",
            "sentencepiece>=0.2",
            "protobuf",            # transformers' SentencePiece conversion in tokenizer tests
            "jinja2>=3.1.6",
            "submitit>=1.5.4,<2",  # the sweep tests' submitit path (its local executor)
        ],
    },
)
