"""MLP Service: training-as-a-service for PyTorch multilayer perceptrons."""

__version__ = "0.1.0"
