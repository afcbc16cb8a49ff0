"""OpenAI's files: training data is uploaded here, checked by the data gate on the way in, and
named by id in job requests. Every query is scoped to the caller's project."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select

from tunesmith.errors import TunesmithError
from tunesmith.jobs import store
from tunesmith.jobs.store import FINISHED, File, Job
from tunesmith.serve import gate
from tunesmith.serve.deps import (
    APIError,
    CallerDep,
    SessionDep,
    SettingsDep,
    get_file,
    scoped,
)
from tunesmith.serve.schemas import FilePublic, file_public, list_page, rows_after

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")

router = APIRouter(prefix="/files", tags=["files"])


@router.post("", response_model=FilePublic)
async def create_file(request: Request, sessions: SessionDep, settings: SettingsDep, caller: CallerDep,
                      file: UploadFile, purpose: Annotated[str, Form()]) -> FilePublic:
    """Upload a data file for fine-tuning. It is stored under a generated id, parsed, and checked
    by the data gate; a file that cannot be parsed is refused with the line and the problem."""
    if purpose != "fine-tune":
        raise APIError(400, f"purpose '{purpose}' is not supported: upload training data with purpose 'fine-tune'.",
                       param="purpose", code="invalid_purpose")
    filename = Path(file.filename or "upload.jsonl").name[:255]  # display only; never a path on our side
    suffix = Path(filename).suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise APIError(400, f"{filename}: unsupported file type; upload one of {', '.join(DATA_SUFFIXES)}.", param="file")
    file_id = store.new_id("file")
    path = settings.files_dir / f"{file_id}{suffix}"
    stored = False
    try:
        # In a thread: copying a large upload to disk on the event loop would stall every other request.
        size = await asyncio.to_thread(_save_upload, file.file, path, int(settings.max_upload_mb * 1024 * 1024))
        if size is None:  # the body limit (serve/limits.py) allows for multipart framing; this is the exact check
            raise APIError(413, f"{filename} is larger than the server's limit of {settings.max_upload_mb:g} MB "
                           "(tunesmith serve --max-upload-mb).", param="file", code="file_too_large")
        try:
            # The gate keeps its process on the app's state, so it takes the app.
            info = await gate.check_upload(request.app, path, filename)
        except TunesmithError as exc:
            code = "file_check_timeout" if isinstance(exc, gate.GateTimeout) else "invalid_file"
            raise APIError(400, str(exc).replace(str(path), filename), param="file", code=code) from None
        f = File(id=file_id, project=caller.project, filename=filename, purpose=purpose, bytes=size, path=str(path),
                 info=info)
        with sessions.begin() as s:
            s.add(f)
        stored = True
    finally:
        if not stored:  # whatever went wrong (refused, timed out, crashed, cancelled): no orphan file
            path.unlink(missing_ok=True)
    return file_public(f)


def _save_upload(source, path: Path, limit: int) -> int | None:
    """Copy an upload to `path` and return its size, or None (and stop reading) once it passes `limit` bytes."""
    size = 0
    with path.open("wb") as out:
        while chunk := source.read(1 << 20):
            size += len(chunk)
            if size > limit:
                return None
            out.write(chunk)
    return size


@router.get("")
def list_files(sessions: SessionDep, caller: CallerDep, purpose: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 10000, after: str | None = None,
               order: Literal["asc", "desc"] = "desc") -> dict:
    """The project's files, newest first (`order=asc` for oldest first)."""
    query = scoped(select(File), File, caller)
    if purpose:
        query = query.where(File.purpose == purpose)
    query = query.order_by(File.created_at.desc() if order == "desc" else File.created_at)
    with sessions() as s:
        rows = list(s.scalars(query))
    return list_page(rows_after(rows, after), limit, file_public)


@router.get("/{file_id}", response_model=FilePublic)
def retrieve_file(sessions: SessionDep, caller: CallerDep, file_id: str) -> FilePublic:
    return file_public(get_file(sessions, caller, file_id))


@router.get("/{file_id}/content")
def download_file(sessions: SessionDep, caller: CallerDep, file_id: str) -> FileResponse:
    f = get_file(sessions, caller, file_id)
    return FileResponse(f.path, filename=f.filename)


@router.delete("/{file_id}")
def delete_file(sessions: SessionDep, caller: CallerDep, file_id: str) -> dict:
    """Delete a file; refused while an unfinished job trains on it."""
    f = get_file(sessions, caller, file_id)
    with sessions.begin() as s:
        busy = s.scalar(select(Job.id).where((Job.training_file == file_id) | (Job.validation_file == file_id),
                                             Job.status.not_in(FINISHED)))
        if busy:
            raise APIError(400, f"{file_id} is used by job {busy}, which has not finished; cancel the job first.",
                           code="file_in_use")
        s.delete(s.get(File, file_id))
    Path(f.path).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}
