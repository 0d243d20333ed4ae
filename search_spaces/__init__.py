"""The search spaces that ship with distforget, importable as ``distforget.search_spaces``
(pyproject maps this folder into the package). See ``distforget/search_space.py``."""
