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


def test_a_small_jobs_params_ride_in_its_message_as_celery_would_send_them(base_settings, redis_db):
    """With params, the message is still field for field Celery's own (its kwargs hold them;
    ``kwargsrepr``, what Celery logs, does not); a big job's params stay out of the message."""
    from bge_m3.queue import MESSAGE_PARAMS_BYTES, small_params

    settings = base_settings.replace(redis_url=base_settings.redis_url.replace("virtual_host=0",
                                                                               "virtual_host=1"))
    job_id = "cd" * 16
    params = {"texts": ["今天天气真好", "阳光明媚"], "modes": ["dense"], "max_length": 512, "truncate": True}
    app = make_celery(settings)
    app.send_task(TASK_NAME, kwargs={"job_id": job_id, "params": params}, task_id=job_id, queue=QUEUE_NAME)
    app.close()
    (celery_raw,) = redis_db.lrange(QUEUE_NAME, 0, -1)
    celery_message, ours = json.loads(celery_raw), json.loads(task_message(job_id, params))
    assert ours["headers"].pop("kwargsrepr") == repr({"job_id": job_id})  # no texts in Celery's logs
    assert "天气" in celery_message["headers"].pop("kwargsrepr")
    assert _strip(ours) == _strip(celery_message)
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(celery_message["body"]))
    assert small_params(params) is params
    big = {"texts": ["x" * (MESSAGE_PARAMS_BYTES // 12)]}
    assert small_params(big) is None
    worst = {"texts": ["\U0001F600" * ((MESSAGE_PARAMS_BYTES - 1024) // 12)]}  # escaped: 12 bytes a char
    assert small_params(worst) is worst and len(task_message(job_id, worst)) < 2 * MESSAGE_PARAMS_BYTES
