"""The cluster backend: Kubeflow Pipelines API, GitHub pull requests and environment sync.

Every call here crosses the network, so each one has a timeout, is retried only where that
is safe (idempotent reads, connection failures before a request was sent, 5xx answers to
reads) with exponential backoff, and fails with a message naming the environment and the
endpoint. The local backend never imports this package.
"""
