"""Retention: deleting a job or a model (app/retention/deletion.py), garbage collection of
the data folder (app/retention/gc.py), backup and restore (app/retention/backup.py).

A file under ``artifacts/`` is removed only under ``lock_artifact`` (app/store.py), the
lock a dataset upload takes before it adds its row and writes its file: the rows are
counted, the file set aside and the transaction committed under it, and the file
deleted after the commit (put back if the transaction rolls back).
"""
