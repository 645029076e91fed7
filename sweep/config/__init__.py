"""One YAML file = one study: its schema assembled from the registries (`sections`), read from YAML
(`yamlfile`), addressed by dotted paths (`paths`), resolved into the complete config a trial runs (`resolve`),
and read through frozen typed sections (`typed`: `cfg.train.lr`).

This face imports nothing, so a module that needs only the YAML reader does not pull in every registry.
"""
