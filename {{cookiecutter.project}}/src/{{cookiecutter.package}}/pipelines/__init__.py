"""The project's Kubeflow pipelines, by name. `make compile` writes each to build/pipelines/."""

from .feature_pipeline import feature_pipeline
from .training_pipeline import training_pipeline

PIPELINES = {"features": feature_pipeline, "training": training_pipeline}
