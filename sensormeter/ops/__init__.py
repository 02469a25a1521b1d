"""Watching sensormeter run: the readings, health problems and Prometheus metrics.

``readings.py`` reads the numbers (cheap queries, nothing kept in the process);
``health.py`` turns them into the problems ``sensormeter check`` reports; ``metrics.py``
serves them to Prometheus, as ``sensormeter metrics`` or a WSGI app a host mounts.
"""
