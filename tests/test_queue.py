"""The API writes Celery's message itself (in the same script as the job record): it must stay
exactly what Celery would publish for the installed Celery and kombu."""
from __future__ import annotations

import base64
import json
import uuid

from bge_m3.queue import QUEUE_NAME, TASK_NAME, make_celery, task_message

VOLATILE = {("headers", "origin"), ("properties", "reply_to"), ("properties", "delivery_tag")}
"""Per-sender or per-message values; everything else must match field for field."""


def _strip(message: dict) -> dict:
    out = json.loads(json.dumps(message))
    for section, key in VOLATILE:
        out[section].pop(key)
    return out


def test_task_message_is_what_celery_publishes(base_settings, redis_db):
    settings = base_settings.replace(redis_url=base_settings.redis_url.replace("virtual_host=0",
                                                                               "virtual_host=1"))
    job_id = "ab" * 16
    app = make_celery(settings)
    app.send_task(TASK_NAME, kwargs={"job_id": job_id}, task_id=job_id, queue=QUEUE_NAME)
    app.close()
    (celery_raw,) = redis_db.lrange(QUEUE_NAME, 0, -1)
    celery_message, ours = json.loads(celery_raw), json.loads(task_message(job_id))
    assert _strip(ours) == _strip(celery_message)
    assert base64.b64decode(ours["body"]) == base64.b64decode(celery_message["body"])
    assert uuid.UUID(ours["properties"]["delivery_tag"]).version == 4
    assert json.loads(task_message(job_id))["properties"]["delivery_tag"] != ours["properties"]["delivery_tag"]
