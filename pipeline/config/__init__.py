"""The configuration: sections, the model and source settings, prompt templates, loading and the reference (``python -m pipeline config``)."""
