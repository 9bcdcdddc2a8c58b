"""Helpers shared by the test modules: functions and classes only (fixtures live in the
``conftest.py`` files). Test modules import from here, never from each other or from a
``conftest.py``."""
