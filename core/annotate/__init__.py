"""Annotation projects: a folder of images annotated from a few supports, reviewed by a person, exported."""
