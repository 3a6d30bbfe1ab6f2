"""Adapters that run mocbench's registry backends inside other ecosystems' models.

``mocbench.integrations.diffusers``: any backend inside diffusers' video transformers (extra
``mocbench[diffusers]``). Each adapter imports its ecosystem lazily; the core never needs it.
"""
