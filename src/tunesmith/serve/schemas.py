"""Request and response schemas more than one router uses, and OpenAI's list object.

A schema only one router uses sits next to that router (e.g. `JobPublic` in routes/jobs.py).
Objects follow OpenAI's API reference, so the official client parses them; tunesmith's
additions are extra fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from tunesmith.jobs.store import File

# --------------------------------------------------------------------------- files


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None
    data_card: dict | None = None
    """tunesmith: the detected format, row count and the data gate's findings."""


def file_public(f: File) -> FilePublic:
    errors = (f.info or {}).get("errors") or []
    details = f"The data gate found {len(errors)} error(s): {errors[0]}" if errors else None
    return FilePublic(id=f.id, bytes=f.bytes, created_at=int(f.created_at), filename=f.filename, purpose=f.purpose,
                      status_details=details, data_card=f.info or None)


# --------------------------------------------------------------------------- fine-tuning job requests

MAX_JOB_SEED = 2**31 - 1  # the job's seed column is a 32-bit integer on PostgreSQL


# Creating a job and previewing one take the same body.
class JobCreate(BaseModel):
    model: str = Field(max_length=255)
    """Base model: a built-in name or one the server was started with (GET /v1/models)."""
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(None, ge=0, le=MAX_JOB_SEED)
    hyperparameters: dict[str, Any] | None = None
    """Deprecated by OpenAI in favour of method; still honoured (for method.type supervised)."""
    method: dict[str, Any] | None = None
    """`{"type": ..., "<type>": {"hyperparameters": {...}}}`; GET /v1/tunesmith/base_models lists the
    reward functions, reward models and judges an RL job may name."""
    metadata: dict[str, str] | None = None
    """Up to 16 pairs, keys up to 64 characters, values up to 512 (as OpenAI)."""
    integrations: list[dict] | None = None

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata is not None and (len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items())):
            raise ValueError("metadata takes up to 16 pairs, keys up to 64 characters and values up to 512")
        return metadata


# --------------------------------------------------------------------------- lists


def rows_after(rows: list, after: str | None) -> list:
    """The rows after the one with id `after` (a page cursor); all of them without one."""
    if not after:
        return rows
    ids = [r.id for r in rows]
    return rows[ids.index(after) + 1:] if after in ids else []


def list_page(rows: list, limit: int, to_public: Callable) -> dict:
    """OpenAI's list object: the first `limit` rows, and whether more follow (fetch `limit + 1`)."""
    return {"object": "list", "data": [to_public(r) for r in rows[:limit]], "has_more": len(rows) > limit}
