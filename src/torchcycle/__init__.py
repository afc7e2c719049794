"""torchcycle: versioned data to an explained, exported, registered and served PyTorch model."""

__version__ = "0.1.0"
