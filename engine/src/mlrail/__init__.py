"""mlrail: the engine of the MLOps GitOps template.

A team's repository holds its components, pipelines, config and overlays; this package holds
everything else (CLI, config, registries, stores, runners, serving, gates, releases, promotion,
pull requests, sync, overlay diff, manifest and workflow checks). See docs/contract.md.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlrail")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
