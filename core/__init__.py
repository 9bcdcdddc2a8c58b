"""What the trainer (worker, models) and the server (app) share, torch free (numpy,
Pillow, pydantic, fsspec, stdlib): the job spec, dataset files and datasets by reference,
the ONNX output contract, the label-issues file, job and model statuses, and the settings
the training code reads. Nothing here imports app, worker or models (``.importlinter``).
"""
