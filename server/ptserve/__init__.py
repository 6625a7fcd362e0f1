"""ptserve: a small KServe v2 (Open Inference Protocol) server for TorchScript models."""

__version__ = "1.0.0"
