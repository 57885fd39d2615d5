"""uniformer-edge: UniFormer video models from a PyTorch checkpoint to a phone."""

__version__ = "0.1.0"
