"""{{ cookiecutter.description | wordwrap(100) }}"""

__version__ = "0.1.0"
