"""Sphinx configuration of zoo's documentation site (MyST Markdown,
sphinx-book-theme, autodoc with sphinx-autodoc-typehints), built with
`sphinx-build -W -b html docs docs/_build/html`."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # the checkout's zoo, also when not installed

import zoo  # noqa: E402

project = "zoo"
author = "The zoo authors"
copyright = "2026, The zoo authors"
release = version = zoo.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md", "**/.ipynb_checkpoints"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
# The page's contents name zoo.get(), not get().
toc_object_entries_show_parents = "all"
autodoc_default_options = {"members": True, "undoc-members": False}
typehints_fully_qualified = False
always_document_param_types = False
napoleon_google_docstring = True
# `x` in a docstring is code, as in Markdown.
default_role = "literal"

html_theme = "sphinx_book_theme"
html_title = f"zoo {release}"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_static_path = []
# The theme's colour mode for a first visit; unset, its script logs a console
# error on every page.
html_context = {"default_mode": "auto"}
