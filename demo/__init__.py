"""The demo: the project's tiny local VLM and the shipped sample data, for machines without a model hub."""
