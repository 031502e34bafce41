"""Suite-wide settings.

Hypothesis draws fresh examples on every run (a clean CI checkout has no example
database), so a property that fails in CI must be reproducible from its log alone:
``print_blob`` prints the ``@reproduce_failure`` line for it.
"""

from hypothesis import settings

settings.register_profile("stagger", print_blob=True)
settings.load_profile("stagger")
