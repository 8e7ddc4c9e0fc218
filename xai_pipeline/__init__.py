"""xai-pipeline: imaging-modality labels and Class-selective Relevance Maps for biomedical figures."""

__version__ = "0.1.0"
