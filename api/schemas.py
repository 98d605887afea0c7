"""JSON Schemas (OpenAPI 3.1 components) of every request and response body."""
from __future__ import annotations

from typing import Any

from api.results import TIMINGS
from api.validation import EMBED_MODES, ENCODINGS, MODES
from bge_m3.records import STATUSES
from bge_m3.settings import MIN_MAX_LENGTH, Settings

NUM = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: dict[str, Any], required: tuple[str, ...] = (), extra: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": list(required)}
    if not extra:
        schema["additionalProperties"] = False
    return schema


def schemas(settings: Settings) -> dict[str, Any]:
    # No maxItems: more than BGE_M3_MAX_TEXTS texts is a 413 (too large), not a 400 (malformed).
    texts = {"type": "array", "items": STR, "minItems": 1,
             "description": f"at most {settings.max_texts} (BGE_M3_MAX_TEXTS), else 413"}
    limits = {"max_length": {**INT, "minimum": MIN_MAX_LENGTH, "maximum": settings.max_length,
                             "default": settings.max_length},
              "truncate": {"type": "boolean", "default": True}}
    encoding = {"type": "string", "enum": list(ENCODINGS),
                "description": "float: float lists; base64: little-endian float32 for dense. "
                               "Absent: dense as floats, ColBERT packed base64."}
    dense = {"oneOf": [{"type": "array", "items": NUM}, {**STR, "description": "base64 float32"}]}
    sparse = obj({"indices": {"type": "array", "items": INT}, "values": {"type": "array", "items": NUM}},
                 ("indices", "values"))
    colbert = obj({"shape": {"type": "array", "items": INT}, "dtype": STR,
                   "data": {"oneOf": [STR, {"type": "array", "items": {"type": "array", "items": NUM}}]}},
                  ("shape", "dtype", "data"))
    usage = obj({"tokens": INT}, ("tokens",))
    error_body = obj({"code": STR, "message": STR}, ("code", "message"))
    nullable_num = {"type": ["number", "null"]}
    return {
        "Error": obj({"error": error_body}, ("error",)),
        "OpenAIError": obj({"error": obj({"message": STR, "type": STR, "code": STR,
                                          "param": {"type": ["string", "null"]}},
                                         ("message", "type", "code"))}, ("error",)),
        "Dense": dense, "Sparse": sparse, "Colbert": colbert, "Usage": usage,
        "Item": obj({"tokens": INT, "dense": ref("Dense"), "sparse": ref("Sparse"),
                     "colbert": ref("Colbert")}, ("tokens",)),
        "JobRequest": obj({"texts": texts,
                           "modes": {"type": "array", "minItems": 1, "default": ["dense"],
                                     "items": {"type": "string", "enum": list(MODES)}},
                           **limits, "encoding": encoding}, ("texts",), extra=False),
        "JobAccepted": obj({"id": STR, "status": {"type": "string", "enum": ["queued"]},
                            "created_at": NUM, "links": obj({"self": STR}, ("self",))},
                           ("id", "status", "created_at", "links")),
        "JobResult": obj({"model": {"type": ["string", "null"]}, "revision": {"type": ["string", "null"]},
                          "dimension": {"type": ["integer", "null"]},
                          "items": {"type": "array", "items": ref("Item")}}, ("items",)),
        "Job": obj({"id": STR, "status": {"type": "string", "enum": list(STATUSES)},
                    "created_at": NUM, "started_at": nullable_num, "finished_at": nullable_num,
                    "result": ref("JobResult"), "usage": ref("Usage"), "error": error_body,
                    "timings": obj({k: NUM for k in TIMINGS})},
                   ("id", "status", "created_at")),
        "EmbedRequest": obj({"texts": texts, "mode": {"type": "string", "enum": list(EMBED_MODES),
                                                      "default": "dense"},
                             **limits, "encoding": encoding}, ("texts",), extra=False),
        "EmbedResponse": obj({"embeddings": {"type": "array"}, "dimension": {"type": ["integer", "null"]},
                              "mode": {"type": "string", "enum": list(EMBED_MODES)}, "latency_ms": NUM,
                              "usage": ref("Usage"),
                              "dense": {"type": "array", "items": ref("Dense")},
                              "sparse": {"type": "array", "items": ref("Sparse")},
                              "colbert": {"type": "array", "items": ref("Colbert")}},
                             ("embeddings", "dimension", "mode", "latency_ms", "usage")),
        "EmbeddingsRequest": obj({"input": {"oneOf": [STR, texts]},
                                  "model": {**STR, "minLength": 1, "examples": ["bge-m3"],
                                            "description": "any name; this server has one model"},
                                  "encoding_format": {"enum": [*ENCODINGS, None], "default": "float"},
                                  "dimensions": {"type": ["integer", "null"], "minimum": 1,
                                                 "description": "must equal the served model's dimension "
                                                                "(1024 for BAAI/bge-m3, GET /v1/models); any "
                                                                "other value is a 400 dimensions_unsupported"}},
                                 ("input", "model")),
        "EmbeddingsResponse": obj({
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": obj({"object": {"type": "string", "enum": ["embedding"]},
                                                    "index": INT, "embedding": ref("Dense")},
                                                   ("object", "index", "embedding"))},
            "model": STR,
            "usage": obj({"prompt_tokens": INT, "total_tokens": INT}, ("prompt_tokens", "total_tokens"))},
            ("object", "data", "model", "usage")),
        "ScoreRequest": obj({"query": STR, "documents": texts,
                             "weights": {"type": "array", "items": {**NUM, "minimum": 0}, "minItems": 3,
                                         "maxItems": 3, "default": [0.4, 0.2, 0.4]}, **limits},
                            ("query", "documents"), extra=False),
        "ScoreResponse": obj({"model": {"type": ["string", "null"]},
                              "weights": {"type": "array", "items": NUM},
                              "scores": {"type": "array", "items": obj(
                                  {"index": INT, "dense": NUM, "sparse": NUM, "colbert": NUM, "hybrid": NUM},
                                  ("index", "dense", "sparse", "colbert", "hybrid"))},
                              "usage": ref("Usage")}, ("weights", "scores", "usage")),
        "Health": obj({"status": {"type": "string", "enum": ["ok"]}}, ("status",)),
        "Ready": obj({"status": {"type": "string", "enum": ["ready"]}, "redis": {"type": "boolean"},
                      "workers": INT}, ("status", "redis", "workers")),
        "NotReady": obj({"error": error_body, "redis": {"type": "boolean"}, "workers": INT},
                        ("error", "redis", "workers")),
        "Model": obj({"id": STR, "object": STR, "created": INT, "owned_by": STR}, ("id", "object")),
        "Models": obj({"object": {"type": "string", "enum": ["list"]},
                       "data": {"type": "array", "items": ref("Model")},
                       "workers": {"type": "array", "items": {"type": "object"}}},
                      ("object", "data", "workers")),
    }
