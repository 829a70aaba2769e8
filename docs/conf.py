"""Sphinx configuration for consul-leader's documentation.

Build with ``make docs`` (``sphinx-build -W``: every warning is an error).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import consul_leader  # noqa: E402

project = "consul-leader"
author = "The consul-leader authors"
copyright = "consul-leader authors"
release = consul_leader.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

# Types come from the annotations and are shown in the parameter lists, the
# way blinker documents itself; signatures stay short.
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
# Values of module-level objects (signal instances, defaults) would show
# memory addresses; the prose says what they are.
autodoc_preserve_defaults = True
# The docs build from the `docs` extra alone (as Read the Docs does): the
# framework integrations' reference is read with the frameworks stubbed.
autodoc_mock_imports = ["django", "celery", "flask", "prometheus_client", "apscheduler", "fastapi",
                        "starlette"]

exclude_patterns = ["_build"]
# The examples are included with literalinclude, not built as pages.
templates_path: list = []

html_theme = "alabaster"
html_theme_options = {
    "description": "Leader election for synchronous Python on HashiCorp Consul",
    "fixed_sidebar": True,
}
html_static_path: list = []

# Not nitpicky: without intersphinx (the docs build offline) every reference
# to the standard library and to TypeVars in annotations would be a warning.
nitpicky = False
