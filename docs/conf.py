"""Sphinx configuration of anonshm's documentation.

Built by ``scripts/docs`` and in CI, warnings as errors and every reference checked::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
    python -m sphinx -W --keep-going -n -b doctest docs docs/_build/doctest
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's anonshm, whatever else is installed

import anonshm  # noqa: E402 - once the path is set

project = "anonshm"
author = "the anonshm authors"
copyright = "the anonshm authors; MIT licence"
release = anonshm.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "myst_parser",  # the guide is Markdown, as the README it comes from
]
myst_heading_anchors = 3  # README-style links to sections (#safety)
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}

exclude_patterns = ["_build", "_inventories"]
nitpicky = True  # every reference must resolve (also asked by -n on the command line)
html_theme = "alabaster"  # Sphinx's own: no theme to install
html_theme_options = {"description": "Anonymous shared memory, NSPR-compatible"}

# -- References to the standard library --------------------------------------------------
# The build machines reach package registries only, so intersphinx cannot fetch
# docs.python.org's objects.inv.  A copy of it is kept in docs/_inventories: Python
# 3.11's inventory as Debian ships it (package python3.11-doc, 3.11.2,
# /usr/share/doc/python3.11/html/objects.inv; 130 KB, PSF licence).  Every stdlib name
# then resolves and links to docs.python.org, without a nitpick_ignore list to keep up.
# Refresh it from the same package (or from docs.python.org/3/objects.inv where there
# is internet); a name newer than 3.11 would show up here as a nitpick warning.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", "_inventories/python3.11.inv"),
}
# typing_extensions has no inventory to fetch offline; its Buffer is the stdlib's
# collections.abc.Buffer (PEP 688, 3.12), which the 3.11 inventory does not have yet.
nitpick_ignore = [("py:class", "typing_extensions.Buffer")]

# -- autodoc ------------------------------------------------------------------------------
# The public names live in _-prefixed modules and are documented as anonshm.<name>
# (docs/api.rst: ``.. currentmodule:: anonshm``).  anonshm's annotations are strings
# whose names are imported only under TYPE_CHECKING (anonshm/_compat.py); autodoc
# evaluates what it can (``os.PathLike``) and keeps the rest as written, which resolves
# against anonshm's own names (``Protection``) and the stdlib inventory
# (``socket.socket``).  So the types stay in the signatures.
autodoc_typehints = "signature"
autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True}  # bases where they say something: api.rst
autoclass_content = "class"  # __init__ is documented on its class (ruff D107)

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- doctest ------------------------------------------------------------------------------
# ``sphinx -b doctest`` runs the ``.. doctest::`` blocks of the guide pages.  The
# docstrings' own >>> examples, which the API page shows, are run by pytest
# (--doctest-modules, with the per-platform selection in conftest.py), so they are not
# run a second time here.
doctest_test_doctest_blocks = ""
doctest_global_setup = "import anonshm"


def _keep_property_docstrings(app, what, name, obj, options, lines):  # noqa: PLR0917 - the event's
    # Napoleon reads a property's first line as Google's "type: description" and
    # would turn "The label: the key ..." into a type named "The label".  anonshm's
    # property docstrings are sentences (the annotation gives the type): keep them as
    # written, restored after napoleon (priority 500) has run.
    if what == "property":
        _saved[name] = list(lines)


def _restore_property_docstrings(app, what, name, obj, options, lines):  # noqa: PLR0917
    if what == "property" and name in _saved:
        lines[:] = _saved.pop(name)


_saved: dict[str, list[str]] = {}


def _check_every_public_name(app, env):
    # Every name in anonshm.__all__ has its entry in api.rst: a name added to the
    # package (the channels, the async calls) fails the build until it is documented.
    from sphinx.util import logging  # noqa: PLC0415

    documented = env.get_domain("py").objects
    for public in anonshm.__all__:
        if f"anonshm.{public}" not in documented:
            logging.getLogger(__name__).warning(
                "anonshm.%s is in anonshm.__all__ but not documented: add it to docs/api.rst",
                public,
            )


def setup(app):
    """Connect the hooks above."""
    app.connect("autodoc-process-docstring", _keep_property_docstrings, priority=400)
    app.connect("autodoc-process-docstring", _restore_property_docstrings, priority=600)
    app.connect("env-check-consistency", _check_every_public_name)
