"""TUNA platform: mine tags, build the datastore, train, evaluate and serve a tag-augmented MLLM."""

__version__ = "0.1.0"
