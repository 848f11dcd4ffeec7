"""Neutral core shared by :mod:`afspawner` and :mod:`afauth`; it imports neither.

- :mod:`afcore.registry`: entry-point plugin registries (each package declares its groups).
- :mod:`afcore.issues`: key-path configuration problems, their collector and one error type.
- :mod:`afcore.options`: declarative plugin options and their checker.
- :mod:`afcore.templates`: ``{placeholder}`` template parsing, checking and filling.
- :mod:`afcore.quantity`: exact Kubernetes quantities (CPU millicores, memory bytes).
"""
