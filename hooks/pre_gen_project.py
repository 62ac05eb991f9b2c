"""Validate every input before anything is generated.

A bad input prints one line naming the key, the value and the expected form, then exits 1;
cookiecutter then removes the half-made output directory. No traceback from this hook.
"""

import json
import keyword
import re
import sys

from slugify import slugify as pyslugify  # cookiecutter's own slugify (python-slugify)

ENVIRONMENTS = ("sandbox", "staging", "production")
# Names derived from the project and their limits: DNS-1123 labels (63 characters) for the
# ServiceAccount and the namespace; a CronJob name at most 52 (its Jobs append 11 characters).
DERIVED_LIMITS = {"-pipeline-runner": 63, "-production": 63, "-features": 52}
MAX_PROJECT = min(limit - len(suffix) for suffix, limit in DERIVED_LIMITS.items())
KUBERNETES_RANGE = (25, 37)  # the schemas kubernetes-validate 1.37 ships
PYTHON_RANGE = (11, 13)

# Each answer as JSON text inside a Python string literal, decoded here: tojson alone writes a
# character outside the BMP as a surrogate pair that Python would read as two lone surrogates.
ANSWERS = {
    "project_name": json.loads({{ cookiecutter.project_name | tojson | tojson }}),
    "project": json.loads({{ cookiecutter.project | tojson | tojson }}),
    "package": json.loads({{ cookiecutter.package | tojson | tojson }}),
    "description": json.loads({{ cookiecutter.description | tojson | tojson }}),
    "github_owner": json.loads({{ cookiecutter.github_owner | tojson | tojson }}),
    "release_owners": json.loads({{ cookiecutter.release_owners | tojson | tojson }}),
    "container_registry": json.loads({{ cookiecutter.container_registry | tojson | tojson }}),
    "promotion": json.loads({{ cookiecutter.promotion | tojson | tojson }}),
    "sandbox_registry_uri": json.loads({{ cookiecutter.sandbox_registry_uri | tojson | tojson }}),
    "staging_registry_uri": json.loads({{ cookiecutter.staging_registry_uri | tojson | tojson }}),
    "production_registry_uri": json.loads({{ cookiecutter.production_registry_uri | tojson | tojson }}),
    "kubernetes_version": json.loads({{ cookiecutter.kubernetes_version | tojson | tojson }}),
    "python_version": json.loads({{ cookiecutter.python_version | tojson | tojson }}),
    "argocd": json.loads({{ cookiecutter.argocd | tojson | tojson }}),
    "cloud": json.loads({{ cookiecutter.cloud | tojson | tojson }}),
    "isolation": json.loads({{ cookiecutter.isolation | tojson | tojson }}),
}


def check_project_name(value):
    # The slug (the default of `project`) must not be empty: cookiecutter would then render the
    # project into the output directory itself and fail with "already exists".
    if not pyslugify(value) or len(value) > 80 or any(c in value for c in "\"'`\\\n{}$"):
        return (
            "1 to 80 characters with at least one letter or digit (the project slug is made from it), "
            "without quotes, backslashes, braces or $"
        )


def check_project(value):
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", value) or "--" in value:
        return "a DNS-1123 label: lowercase letters, digits and single '-', starting with a letter"
    if len(value) > MAX_PROJECT:
        return (
            f"at most {MAX_PROJECT} characters, so that '<project>-features' (a CronJob, 52) and "
            "'<project>-pipeline-runner' (63) fit Kubernetes' name limits"
        )


def check_package(value):
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", value):
        return "a lowercase Python identifier (letters, digits, '_', not starting with a digit)"
    if keyword.iskeyword(value) or keyword.issoftkeyword(value):
        return "a Python identifier that is not a keyword"
    if value in sys.stdlib_module_names or value in {"kfp", "mlflow", "sklearn", "mlserver", "yaml", "mlrail"}:
        return "a name that does not shadow a standard-library or dependency module"
    if len(value) > MAX_PROJECT:  # the longest the tests check: generated code stays within 120 columns
        return f"at most {MAX_PROJECT} characters"


def check_description(value):
    if len(value) > 300 or any(c in value for c in "\"\\\n`$"):
        return "at most 300 characters on one line, without double quotes, backslashes, backticks or $"


def check_github_owner(value):
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}", value):
        return "a GitHub user or organisation: 1-39 letters, digits or single '-', not at either end"


def check_release_owners(value):
    owners = value.split()
    pattern = r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:/[A-Za-z0-9._-]+)?|[^@\s]+@[^@\s]+\.[a-z]+"
    if not owners or not all(re.fullmatch(pattern, owner) for owner in owners):
        return "space-separated CODEOWNERS entries such as @user, @org/team or name@example.com"


def check_container_registry(value):
    host = r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]{1,5})?"
    path = r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    if not re.fullmatch(host + path, value) or len(value) > 200:
        return "a lowercase registry path such as ghcr.io/my-org or 123456789.dkr.ecr.eu-west-1.amazonaws.com/ml"


def check_promotion(value):
    if value not in ("transit", "retrain"):
        return "transit or retrain"


def check_registry_uri(value):
    if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?", value):
        return "an http:// or https:// URL of an MLflow tracking server, without spaces or query"


def _minor_in(value, major, bounds):
    match = re.fullmatch(rf"{major}\.([0-9]+)", value)
    return match is not None and bounds[0] <= int(match.group(1)) <= bounds[1]


def check_kubernetes_version(value):
    if not _minor_in(value, 1, KUBERNETES_RANGE):
        return f"a Kubernetes minor version from 1.{KUBERNETES_RANGE[0]} to 1.{KUBERNETES_RANGE[1]}, such as 1.32"


def check_python_version(value):
    if not _minor_in(value, 3, PYTHON_RANGE):
        return f"a Python minor version from 3.{PYTHON_RANGE[0]} to 3.{PYTHON_RANGE[1]}, such as 3.11"


def check_argocd(value):
    if value not in ("yes", "no"):
        return "yes or no"


def check_cloud(value):
    if value not in ("aws", "gcp", "none"):
        return "aws, gcp or none"


def check_isolation(value):
    if value not in ("namespaces", "clusters"):
        return "namespaces (one cluster, a namespace per environment) or clusters (a cluster per environment)"


CHECKS = {
    "project_name": check_project_name,
    "project": check_project,
    "package": check_package,
    "description": check_description,
    "github_owner": check_github_owner,
    "release_owners": check_release_owners,
    "container_registry": check_container_registry,
    "promotion": check_promotion,
    "sandbox_registry_uri": check_registry_uri,
    "staging_registry_uri": check_registry_uri,
    "production_registry_uri": check_registry_uri,
    "kubernetes_version": check_kubernetes_version,
    "python_version": check_python_version,
    "argocd": check_argocd,
    "cloud": check_cloud,
    "isolation": check_isolation,
}


def main():
    for key, check in CHECKS.items():
        value = ANSWERS[key]
        expected = check(value)
        if expected:
            print(f"error: {key}={value!r} is invalid: expected {expected}.", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
