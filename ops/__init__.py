"""Shared Celery plumbing: the base task, worker signal handlers and logging context.

Domain apps do not import from here except the base task through Celery itself.
"""
