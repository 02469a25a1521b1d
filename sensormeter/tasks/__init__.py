"""The RQ side: the queue, the job envelope, and every job sensormeter runs.

Jobs take ids and hour labels, never model objects, and are safe to run twice.
"""
