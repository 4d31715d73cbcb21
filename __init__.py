"""Not zoo's package (that is ./zoo/): its repository's top folder.

Python imports this folder as `zoo` when run from the folder that holds a
clone named zoo (`cd ..; python -c "import zoo"`), where it would otherwise be
an empty namespace package. It loads the real package, ./zoo, in its place.
"""
if __name__ == "zoo":
  import importlib.util
  import os
  import sys
  _inner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo")
  _spec = importlib.util.spec_from_file_location(
      "zoo", os.path.join(_inner, "__init__.py"),
      submodule_search_locations=[_inner])
  _zoo = importlib.util.module_from_spec(_spec)
  sys.modules["zoo"] = _zoo  # what `import zoo` returns (importlib's rule)
  _spec.loader.exec_module(_zoo)
