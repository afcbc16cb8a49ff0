"""The API's routers, one module per resource; `serve/app.py` mounts each under /v1.

    files.py         /v1/files: upload, list, retrieve, download, delete
    jobs.py          /v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints
    models.py        /v1/models: base and fine-tuned models as OpenAI lists them; delete
    completions.py   /v1/chat/completions and /v1/completions
    platform.py      /v1/tunesmith: the key's project, base models and methods, a file's safe fixes, a job's preview
    tuned_models.py  /v1/tunesmith/models: fine-tuned models with their metrics, and their weights to download
"""
