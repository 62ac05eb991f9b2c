"""Kubeflow Pipelines components. Each module keeps its logic in pure functions (unit-tested)
and wraps them in a thin `@dsl.component` that runs in the project image."""

import os

# Components run in the project image, which already holds this package and its pinned
# dependencies: nothing is pip-installed when a step starts. CI sets PROJECT_IMAGE to the
# image digest it just pushed, so a compiled pipeline names exactly one image.
DEFAULT_IMAGE = "{{ cookiecutter.container_registry }}/{{ cookiecutter.project }}:0.1.0"
BASE_IMAGE = os.environ.get("PROJECT_IMAGE") or DEFAULT_IMAGE
