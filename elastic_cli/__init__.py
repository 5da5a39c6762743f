"""elastic: segment-recurrent language models with Elastic Memory for long documents."""

__version__ = "0.1.0"
