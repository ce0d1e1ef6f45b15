//! The OpenAPI 3 document served at `/openapi.json`, written by hand.
//!
//! Kept true by tests: every route in [`crate::api::routes`] is documented here and every
//! documented operation is routed (`tests` below); the integration tests check the bodies the
//! real server returns against the schemas here.

use serde_json::{Value, json};

use crate::error::ErrorCode;

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

fn param(name: &str, location: &str, schema: Value, description: &str) -> Value {
    json!({
        "name": name, "in": location, "required": location == "path",
        "schema": schema, "description": description,
    })
}

/// A record as the API shows it; on WebSocket frames with a `type` field.
fn record_schema(kind: Option<&str>) -> Value {
    let nullable_string = json!({"type": ["string", "null"]});
    let mut schema = json!({
        "type": "object",
        "required": ["topic", "partition", "offset", "timestamp", "key", "value", "headers"],
        "description": "Keys, values and header values are strings when valid UTF-8 \
            (format json); otherwise null, with the bytes in key_base64, value_base64 \
            or headers_base64.",
        "properties": {
            "topic": {"type": "string"},
            "partition": {"type": "integer"},
            "offset": {"type": "integer"},
            "timestamp": {"type": "integer"},
            "key": nullable_string,
            "key_base64": {"type": "string"},
            "value": nullable_string,
            "value_base64": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": nullable_string},
            "headers_base64": {"type": "object", "additionalProperties": {"type": "string"}},
            "value_decoded": {"description": "With schema=true: the value decoded with the \
                topic's schema (Protobuf's JSON mapping)."},
            "value_decode_error": {"type": "string", "description": "With schema=true: why \
                the value is not a message of the topic's schema."},
        },
    });
    if let Some(kind) = kind {
        schema["properties"]["type"] = json!({"const": kind});
        schema["required"]
            .as_array_mut()
            .unwrap()
            .push(json!("type"));
    }
    schema
}

/// The whole document.
pub fn document() -> Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let topic = param("topic", "path", json!({"type": "string"}), "Topic name.");
    let nullable_string = json!({"type": ["string", "null"]});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "weir HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Produce, fetch and administer topics over HTTP; subscribe to live \
                records over WebSocket at /ws. Errors are JSON with a stable code. When the \
                server requires authentication, every operation but /health and /ready needs \
                a bearer token (an API token or a JWT; on /ws also ?access_token=), else 401 \
                unauthenticated.",
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/health": {"get": {
                "summary": "Liveness: the process answers.",
                "responses": {"200": json_response("Alive.", "Status")},
            }},
            "/ready": {"get": {
                "summary": "Readiness: the broker is open and not shutting down.",
                "responses": {
                    "200": json_response("Ready.", "Status"),
                    "503": error_response("Shutting down (code shutting_down)."),
                },
            }},
            "/openapi.json": {"get": {
                "summary": "This document.",
                "responses": {"200": {"description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
            "/": {"get": {
                "summary": "Redirects to the web console.",
                "security": [{}],
                "responses": {"307": {"description": "To /console/."}},
            }},
            "/console/": {"get": {
                "summary": "The web console: one page, served from the binary.",
                "security": [{}],
                "responses": {"200": {"description": "HTML.",
                    "content": {"text/html": {"schema": {"type": "string"}}}}},
            }},
            "/console/assets/{file}": {"get": {
                "summary": "A file of the web console (scripts, style sheet, icon).",
                "security": [{}],
                "parameters": [param("file", "path", json!({"type": "string"}), "File name.")],
                "responses": {
                    "200": {"description": "The file.", "content": {"*/*": {"schema": {"type": "string"}}}},
                    "404": error_response("No such file (code not_found)."),
                },
            }},
            "/console/live": {"get": {
                "summary": "The console's live feed, Server-Sent Events: a `hello` event (version, \
                    start time, settings), a `history` event (the samples of the last 15 \
                    minutes, oldest first), then a `sample` event each second. A sample holds \
                    totals since the server started per front door (records and bytes in, \
                    bytes out) and gauges (connections, disk, produce memory in use). A token \
                    may be given as the access_token query parameter.",
                "parameters": [param("access_token", "query", json!({"type": "string"}), "A bearer token, for browsers' EventSource, which cannot send headers.")],
                "responses": {
                    "200": {"description": "An event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "503": error_response("Too many feeds open (code too_many_connections)."),
                },
            }},
            "/console/me": {"get": {
                "summary": "Who the caller is (`principal`; `checked`: whether access control \
                    lists apply) and what the console offers her: `sees` (overview, topics, \
                    messages, groups, flow, pipelines) and `may` (create_topics, delete_topics, \
                    produce, reset_offsets, operate_pipelines), each true when some resource \
                    of the kind is open to her. Each request is still checked on its own.",
                "responses": {"200": {"description": "The caller.",
                    "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
            "/stats": {"get": {
                "summary": "Counters of the WebSocket side: connections, feeds, records sent, \
                    records dropped or conflated by policy, slow consumers disconnected, gaps.",
                "responses": {"200": json_response("Counters.", "Stats")},
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics in the text exposition format: produce and fetch \
                    rates and bytes, latencies, log sizes, consumer lag, connections per front \
                    door, throttling and drops.",
                "responses": {"200": {
                    "description": "Prometheus text format 0.0.4.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }},
            }},
            "/topics": {
                "get": {
                    "summary": "Every topic with its configuration and partitions.",
                    "responses": {"200": json_response("Topics by name.", "TopicList")},
                },
                "post": {
                    "summary": "Create a topic. Settings not given take the broker's defaults.",
                    "requestBody": {"required": true, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/CreateTopic"}}}},
                    "responses": {
                        "201": json_response("Created.", "Topic"),
                        "400": error_response("bad_request, invalid_topic_name or invalid_config."),
                        "409": error_response("topic_exists."),
                        "413": error_response("payload_too_large."),
                    },
                },
            },
            "/topics/{topic}": {
                "get": {
                    "summary": "One topic.",
                    "parameters": [topic],
                    "responses": {
                        "200": json_response("The topic.", "Topic"),
                        "404": error_response("unknown_topic."),
                    },
                },
                "delete": {
                    "summary": "Delete a topic, its data and its committed offsets.",
                    "parameters": [topic],
                    "responses": {
                        "204": {"description": "Deleted."},
                        "404": error_response("unknown_topic."),
                    },
                },
            },
            "/topics/{topic}/records": {"post": {
                "summary": "Produce records. JSON: records are routed by partition, else by key, \
                    else together to one partition; each partition's records are written as one \
                    batch. application/octet-stream: the body is one record's value; the key \
                    and partition come from the query string.",
                "parameters": [
                    topic,
                    param("key", "query", json!({"type": "string"}), "Key of an octet-stream record."),
                    param("partition", "query", json!({"type": "integer", "minimum": 0}),
                        "Partition of an octet-stream record."),
                ],
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ProduceRequest"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                }},
                "responses": {
                    "200": json_response("Where each record went, in request order.", "ProduceResponse"),
                    "207": json_response("Written in part: a write failed after other \
                        partitions of the request were written. Each record has its offset or \
                        its error, in request order; `error` is the first failure.",
                        "PartialProduceResponse"),
                    "400": error_response("bad_request or invalid_record."),
                    "404": error_response("unknown_topic or unknown_partition."),
                    "413": error_response("payload_too_large or record_too_large (nothing was written)."),
                    "415": error_response("unsupported_media_type."),
                    "503": error_response("shutting_down."),
                    "507": error_response("storage_full (nothing was written)."),
                },
            }},
            "/topics/{topic}/partitions/{partition}/records": {"get": {
                "summary": "Fetch records from one partition, from an offset or a timestamp \
                    (default: the log start), waiting up to max_wait_ms for the first record.",
                "parameters": [
                    topic,
                    param("partition", "path", json!({"type": "integer", "minimum": 0}), "Partition."),
                    param("offset", "query", json!({"type": "integer", "minimum": 0}), "First offset."),
                    param("timestamp", "query", json!({"type": "integer"}),
                        "Start at the first record at or after this time (ms since the epoch)."),
                    param("max_bytes", "query", json!({"type": "integer", "minimum": 1}),
                        "About this many bytes of stored batches, and of record data in the answer (at least one record). Default 1 MiB."),
                    param("max_wait_ms", "query", json!({"type": "integer", "minimum": 0}),
                        "Long-poll up to this long when nothing is there yet. Default 0."),
                    param("format", "query", json!({"type": "string", "enum": ["json", "binary"]}),
                        "json: UTF-8 keys and values as strings; binary: always base64."),
                    param("schema", "query", json!({"type": "boolean"}),
                        "Decode each value with the topic's schema too ([schemas.TOPIC] in the \
                        server's configuration): value_decoded, or value_decode_error. A topic \
                        without one answers 400."),
                ],
                "responses": {
                    "200": json_response("Records.", "FetchResponse"),
                    "400": error_response("bad_request."),
                    "404": error_response("unknown_topic or unknown_partition."),
                    "416": error_response("offset_out_of_range."),
                },
            }},
            "/topics/{topic}/keys/{key}": {"get": {
                "summary": "The latest record of a key in a compacted topic (the key is the path \
                    segment's UTF-8 text). Indexed per partition on the first lookup, then kept \
                    up to date.",
                "parameters": [
                    topic,
                    param("key", "path", json!({"type": "string"}), "Key."),
                    param("format", "query", json!({"type": "string", "enum": ["json", "binary"]}),
                        "json: UTF-8 keys and values as strings; binary: always base64."),
                ],
                "responses": {
                    "200": json_response("The record.", "Record"),
                    "400": error_response("bad_request: the topic is not compacted, or has more \
                        keys than key_index_max_keys."),
                    "404": error_response("unknown_topic, or unknown_key (never written, or \
                        deleted by a tombstone)."),
                },
            }},
            "/groups": {"get": {
                "summary": "Consumer groups: those with members and those with committed offsets.",
                "responses": {"200": json_response("Group names.", "GroupList")},
            }},
            "/groups/{group}": {"get": {
                "summary": "One group: members, assignment, committed offsets and lag.",
                "parameters": [param("group", "path", json!({"type": "string"}), "Group name.")],
                "responses": {
                    "200": json_response("The group.", "Group"),
                    "404": error_response("unknown_group."),
                },
            }},
            "/groups/{group}/lag": {"get": {
                "summary": "A group's lag over the last 15 minutes, by topic: the sum over the \
                    topic's partitions, sampled every `period_s` seconds by the server whether \
                    or not anyone asks. Points are [ms since the epoch, records]. A group the \
                    server has not sampled yet has no topics.",
                "parameters": [param("group", "path", json!({"type": "string"}), "Group name.")],
                "responses": {"200": {"description": "The lag history.", "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["period_s", "topics"],
                    "properties": {
                        "period_s": {"type": "integer"},
                        "topics": {"type": "array", "items": {"type": "object",
                            "required": ["topic", "points"],
                            "properties": {
                                "topic": {"type": "string"},
                                "points": {"type": "array", "items": {"type": "array",
                                    "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}},
                            }}},
                    },
                }}}}},
            }},
            "/groups/{group}/offsets": {"post": {
                "summary": "Reset where a group with no members reads a topic from: the \
                    earliest offset, the latest, or the first at or after a time, on every \
                    partition of the topic or those given. Refused while the group has members.",
                "parameters": [param("group", "path", json!({"type": "string"}), "Group name.")],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["topic", "to"],
                    "additionalProperties": false,
                    "properties": {
                        "topic": {"type": "string"},
                        "partitions": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "to": {"oneOf": [
                            {"enum": ["earliest", "latest"]},
                            {"type": "object", "required": ["timestamp"], "additionalProperties": false,
                             "properties": {"timestamp": {"type": "integer", "description": "ms since the epoch"}}},
                        ]},
                    },
                }}}},
                "responses": {
                    "200": {"description": "The offsets committed.", "content": {"application/json": {"schema": {
                        "type": "object",
                        "required": ["group", "offsets"],
                        "properties": {
                            "group": {"type": "string"},
                            "offsets": {"type": "array", "items": {"type": "object",
                                "required": ["topic", "partition", "offset"],
                                "properties": {"topic": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}}}},
                        },
                    }}}},
                    "400": error_response("bad_request."),
                    "404": error_response("unknown_topic or unknown_partition."),
                    "409": error_response("group_not_empty: stop its members first."),
                },
            }},
            "/pipelines": {"get": {
                "summary": "The server's pipelines and their states.",
                "responses": {"200": json_response("Pipelines.", "PipelineList")},
            }},
            "/pipelines/{pipeline}": {"get": {
                "summary": "One pipeline: its state, restarts, last error, and per component \
                    the events received, sent, dropped by design and failed (to the dead-letter \
                    output), and its input queue's fill.",
                "parameters": [param("pipeline", "path", json!({"type": "string"}), "Pipeline name.")],
                "responses": {
                    "200": json_response("The pipeline.", "Pipeline"),
                    "404": error_response("unknown_pipeline."),
                },
            }},
            "/pipelines/{pipeline}/start": {"post": {
                "summary": "Starts a stopped pipeline (from its declaration as last loaded).",
                "parameters": [param("pipeline", "path", json!({"type": "string"}), "Pipeline name.")],
                "responses": {
                    "204": {"description": "Running."},
                    "404": error_response("unknown_pipeline."),
                },
            }},
            "/pipelines/{pipeline}/stop": {"post": {
                "summary": "Stops a pipeline: its sources stop reading, what they read drains, \
                    positions are committed. Answers once stopped.",
                "parameters": [param("pipeline", "path", json!({"type": "string"}), "Pipeline name.")],
                "responses": {
                    "204": {"description": "Stopped."},
                    "404": error_response("unknown_pipeline."),
                },
            }},
            "/pipelines/{pipeline}/reload": {"post": {
                "summary": "Reads the declarations again and restarts the pipeline with its new \
                    one, from its committed positions. An invalid declaration is refused and the \
                    running pipeline is left alone.",
                "parameters": [param("pipeline", "path", json!({"type": "string"}), "Pipeline name.")],
                "responses": {
                    "204": {"description": "Reloaded."},
                    "400": error_response("invalid_config: the new declaration, and why."),
                    "404": error_response("unknown_pipeline."),
                },
            }},
            "/pipelines/{pipeline}/ingest": {"post": {
                "summary": "Feeds the pipeline's http source: one event per line of the body. \
                    Answered once every event was delivered (written by the sinks or sent to the \
                    dead-letter output); anything but 200 means retry.",
                "parameters": [param("pipeline", "path", json!({"type": "string"}), "Pipeline name.")],
                "requestBody": {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                "responses": {
                    "200": json_response("Delivered.", "Ingested"),
                    "400": error_response("bad_request: too many lines."),
                    "404": error_response("unknown_pipeline (or it has no http source)."),
                    "413": error_response("payload_too_large."),
                    "429": error_response("pipeline_busy: nothing was taken; see Retry-After."),
                    "503": error_response("pipeline_not_running or not_delivered."),
                    "504": error_response("delivery_timeout."),
                },
            }},
            "/ws": {"get": {
                "summary": "WebSocket live push. Send {\"op\":\"subscribe\",\"topics\":[..],\
                    \"keys\":[..],\"from\":\"latest\"|\"earliest\"|\"snapshot\"|{\"offset\":{\"0\":N}}|\
                    {\"offsets\":{\"topic\":{\"0\":N}}}|{\"timestamp\":ms},\"policy\":\"conflate\"|\"drop_oldest\"|\"disconnect\",\
                    \"format\":\"json\"|\"binary\"}; receive subscribed, record, gap, dropped, \
                    snapshot_end and error frames (schemas WsRecord, WsGap, WsDropped, \
                    WsSubscribed, WsSnapshotEnd, WsError). from=snapshot (compacted topics only) \
                    first sends the latest record of every key (of keys, when given), then a \
                    snapshot_end frame, then live records from where the snapshot ended. A \
                    disconnect-policy overflow closes with code 4001, the idle timeout with 4002, \
                    shutdown with 1001.",
                "responses": {
                    "101": {"description": "Switching to the WebSocket protocol."},
                    "503": error_response("too_many_connections or shutting_down."),
                },
            }},
            "/debug/pprof/profile": {"get": {
                "summary": "Only when profiling is enabled ([http] profiling = true, or \
                    WEIR_HTTP__PROFILING=true). Samples the process's CPU for `seconds` at 99 Hz \
                    and answers a gzip-compressed pprof protobuf (`go tool pprof` reads it) or, \
                    with format=flamegraph, an SVG flame graph. One profile at a time.",
                "parameters": [
                    param("seconds", "query", json!({"type": "integer", "minimum": 1}),
                        "How long to sample. Default 10; more than 60 is shortened to 60."),
                    param("format", "query",
                        json!({"type": "string", "enum": ["pprof", "flamegraph"]}),
                        "pprof (default): gzip-compressed protobuf; flamegraph: SVG."),
                ],
                "responses": {
                    "200": {
                        "description": "The profile.",
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "image/svg+xml": {"schema": {"type": "string"}},
                        },
                    },
                    "400": error_response("bad_request (seconds=0, an unknown format)."),
                    "404": error_response("profiling_disabled: profiling is off."),
                    "409": error_response("profile_in_progress: another profile is being taken."),
                    "500": error_response("internal: the profiler failed."),
                },
            }},
            "/debug/heap": {"get": {
                "summary": "Only when profiling is enabled ([http] profiling = true, or \
                    WEIR_HTTP__PROFILING=true). Memory: the process's resident, peak resident \
                    and virtual size and threads (from /proc/self/status; null where not \
                    available), the global allocator's name (its own statistics are not \
                    exposed: mimalloc offers them only through unsafe foreign calls) and the \
                    produce memory budget.",
                "responses": {
                    "200": json_response("Memory figures.", "Heap"),
                    "404": error_response("profiling_disabled: profiling is off."),
                },
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "An API token (`weir user token NAME`) or a JWT; required when \
                    the server's [auth] is enabled.",
            }},
            "schemas": {
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"$ref": "#/components/schemas/ErrorDetail"}},
            },
            "ErrorDetail": {
                "type": "object", "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": codes},
                    "message": {"type": "string"},
                },
            },
            "Heap": {
                "type": "object", "required": ["allocator", "process", "produce_memory"],
                "properties": {
                    "allocator": {"type": "string", "description": "The global allocator."},
                    "process": {
                        "type": "object",
                        "required": ["rss_bytes", "peak_rss_bytes", "virtual_bytes", "threads"],
                        "properties": {
                            "rss_bytes": {"type": ["integer", "null"], "description": "VmRSS."},
                            "peak_rss_bytes": {"type": ["integer", "null"], "description": "VmHWM."},
                            "virtual_bytes": {"type": ["integer", "null"], "description": "VmSize."},
                            "threads": {"type": ["integer", "null"]},
                        },
                    },
                    "produce_memory": {
                        "type": "object",
                        "description": "The produce memory budget ([limits] produce_memory_bytes) \
                            shared by every front door.",
                        "required": ["total_bytes", "available_bytes", "in_use_bytes"],
                        "properties": {
                            "total_bytes": {"type": "integer"},
                            "available_bytes": {"type": "integer"},
                            "in_use_bytes": {"type": "integer"},
                        },
                    },
                },
            },
            "Status": {"type": "object", "required": ["status"],
                "properties": {"status": {"type": "string"}}},
            "Stats": {"type": "object", "required": ["ws"], "properties": {"ws": {
                "type": "object",
                "required": ["connections_open", "connections_total", "subscriptions_open",
                    "feeds_open", "records_fetched", "records_sent", "dropped_oldest",
                    "conflated", "disconnected_slow", "gaps", "idle_timeouts"],
                "properties": {
                    "connections_open": {"type": "integer"},
                    "connections_total": {"type": "integer"},
                    "subscriptions_open": {"type": "integer"},
                    "feeds_open": {"type": "integer"},
                    "records_fetched": {"type": "integer"},
                    "records_sent": {"type": "integer"},
                    "dropped_oldest": {"type": "integer"},
                    "conflated": {"type": "integer"},
                    "disconnected_slow": {"type": "integer"},
                    "gaps": {"type": "integer"},
                    "idle_timeouts": {"type": "integer"},
                },
            }}},
            "TopicConfig": {
                "type": "object",
                "required": ["partitions", "retention_ms", "retention_bytes", "durability",
                    "max_batch_bytes", "segment_bytes", "timestamp_type", "cleanup_policy",
                    "delete_retention_ms", "min_compaction_lag_ms", "max_compaction_lag_ms",
                    "min_cleanable_dirty_ratio"],
                "properties": {
                    "partitions": {"type": "integer", "minimum": 1},
                    "retention_ms": {"type": ["integer", "null"]},
                    "retention_bytes": {"type": ["integer", "null"]},
                    "durability": {"$ref": "#/components/schemas/Durability"},
                    "max_batch_bytes": {"type": "integer"},
                    "segment_bytes": {"type": "integer"},
                    "timestamp_type": {"$ref": "#/components/schemas/TimestampType"},
                    "cleanup_policy": {"$ref": "#/components/schemas/CleanupPolicy"},
                    "delete_retention_ms": {"type": "integer"},
                    "min_compaction_lag_ms": {"type": "integer"},
                    "max_compaction_lag_ms": {"type": ["integer", "null"]},
                    "min_cleanable_dirty_ratio": {"type": "number"},
                },
            },
            "CleanupPolicy": {
                "description": "What becomes of old records: deleted by retention (delete), \
                    compacted to the latest record of each key (compact; every record needs a \
                    key), or both (compact_delete).",
                "type": "string", "enum": ["delete", "compact", "compact_delete"],
            },
            "TimestampType": {
                "description": "Whose clock stamps records: the producer's (create_time) or the \
                    broker's at append (log_append_time).",
                "type": "string", "enum": ["create_time", "log_append_time"],
            },
            "Durability": {
                "description": "\"always\", \"never\" or {\"interval\":{\"ms\":N}}.",
                "oneOf": [
                    {"type": "string", "enum": ["always", "never"]},
                    {"type": "object", "required": ["interval"], "properties": {"interval": {
                        "type": "object", "required": ["ms"],
                        "properties": {"ms": {"type": "integer", "minimum": 1}}}}},
                ],
            },
            "CreateTopic": {
                "type": "object", "required": ["name"], "additionalProperties": false,
                "properties": {
                    "name": {"type": "string"},
                    "partitions": {"type": "integer", "minimum": 1},
                    "retention_ms": {"type": "integer", "minimum": 1},
                    "retention_bytes": {"type": "integer", "minimum": 1},
                    "durability": {"$ref": "#/components/schemas/Durability"},
                    "max_batch_bytes": {"type": "integer"},
                    "segment_bytes": {"type": "integer", "minimum": 1024},
                    "timestamp_type": {"$ref": "#/components/schemas/TimestampType"},
                    "cleanup_policy": {"$ref": "#/components/schemas/CleanupPolicy"},
                    "delete_retention_ms": {"type": "integer", "minimum": 0},
                    "min_compaction_lag_ms": {"type": "integer", "minimum": 0},
                    "max_compaction_lag_ms": {"type": "integer", "minimum": 1},
                    "min_cleanable_dirty_ratio": {"type": "number", "minimum": 0, "maximum": 1},
                },
            },
            "Partition": {
                "type": "object",
                "required": ["partition", "log_start_offset", "high_watermark", "size_bytes"],
                "properties": {
                    "partition": {"type": "integer"},
                    "log_start_offset": {"type": "integer"},
                    "high_watermark": {"type": "integer"},
                    "size_bytes": {"type": "integer"},
                },
            },
            "Topic": {
                "type": "object", "required": ["name", "config", "partitions"],
                "properties": {
                    "name": {"type": "string"},
                    "config": {"$ref": "#/components/schemas/TopicConfig"},
                    "schema": {"type": ["object", "null"], "description": "The values' schema \
                        when the server declares one: type protobuf and the message's full name.",
                        "properties": {"type": {"const": "protobuf"}, "message": {"type": "string"}}},
                    "partitions": {"type": "array", "items": {"$ref": "#/components/schemas/Partition"}},
                },
            },
            "TopicList": {"type": "object", "required": ["topics"], "properties": {
                "topics": {"type": "array", "items": {"$ref": "#/components/schemas/Topic"}}}},
            "RecordIn": {
                "type": "object", "additionalProperties": false,
                "description": "A string key or value is stored as its UTF-8 text, any other JSON \
                    value as its JSON text; *_base64 carry arbitrary bytes.",
                "properties": {
                    "key": {},
                    "key_base64": {"type": "string"},
                    "value": {},
                    "value_base64": {"type": "string"},
                    "headers": {"type": "object", "additionalProperties": nullable_string},
                    "partition": {"type": "integer", "minimum": 0},
                    "timestamp": {"type": "integer"},
                },
            },
            "ProduceRequest": {
                "type": "object", "required": ["records"], "additionalProperties": false,
                "properties": {"records": {"type": "array", "minItems": 1,
                    "items": {"$ref": "#/components/schemas/RecordIn"}}},
            },
            "ProduceResponse": {
                "type": "object", "required": ["topic", "offsets"],
                "properties": {
                    "topic": {"type": "string"},
                    "offsets": {"type": "array", "items": {
                        "type": "object", "required": ["partition", "offset"],
                        "properties": {"partition": {"type": "integer"}, "offset": {"type": "integer"}},
                    }},
                },
            },
            "PartialProduceResponse": {
                "type": "object", "required": ["topic", "offsets", "error"],
                "properties": {
                    "topic": {"type": "string"},
                    "offsets": {"type": "array", "items": {
                        "type": "object", "required": ["partition"],
                        "properties": {
                            "partition": {"type": ["integer", "null"]},
                            "offset": {"type": "integer"},
                            "error": {"$ref": "#/components/schemas/ErrorDetail"},
                        },
                    }},
                    "error": {"$ref": "#/components/schemas/ErrorDetail"},
                },
            },
            "Record": record_schema(None),
            "FetchResponse": {
                "type": "object",
                "required": ["topic", "partition", "high_watermark", "log_start_offset",
                    "next_offset", "records"],
                "properties": {
                    "topic": {"type": "string"},
                    "partition": {"type": "integer"},
                    "high_watermark": {"type": "integer"},
                    "log_start_offset": {"type": "integer"},
                    "next_offset": {"type": "integer", "description": "Where to fetch next."},
                    "records": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}},
                },
            },
            "PipelineList": {"type": "object", "required": ["pipelines"], "properties": {
                "pipelines": {"type": "array", "items": {"$ref": "#/components/schemas/PipelineStatus"}}}},
            "PipelineStatus": {
                "type": "object",
                "required": ["name", "state", "restarts", "last_error", "last_error_at_ms"],
                "properties": {
                    "name": {"type": "string"},
                    "state": {"enum": ["starting", "running", "restarting", "stopping", "stopped", "finished"]},
                    "error": {"type": "string", "description": "With state restarting: why."},
                    "restarts": {"type": "integer"},
                    "last_error": {"type": ["string", "null"]},
                    "last_error_at_ms": {"type": ["integer", "null"]},
                },
            },
            "Pipeline": {
                "type": "object",
                "required": ["name", "state", "restarts", "last_error", "last_error_at_ms", "components"],
                "properties": {
                    "name": {"type": "string"},
                    "state": {"enum": ["starting", "running", "restarting", "stopping", "stopped", "finished"]},
                    "error": {"type": "string", "description": "With state restarting: why."},
                    "restarts": {"type": "integer"},
                    "last_error": {"type": ["string", "null"]},
                    "last_error_at_ms": {"type": ["integer", "null"]},
                    "components": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "kind", "inputs", "received", "sent", "dropped", "errors", "queued_batches", "queued_bytes", "lag", "checkpoint_ms", "watermark_ms", "retrying", "retrying_since_ms"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"enum": ["source", "transform", "sink"]},
                        "inputs": {"type": "array", "items": {"type": "string"}, "description": "What it reads: component names, or component.output for a route's outputs."},
                        "received": {"type": "integer"},
                        "sent": {"type": "integer"},
                        "dropped": {"type": "integer"},
                        "errors": {"type": "integer"},
                        "queued_batches": {"type": ["integer", "null"]},
                        "queued_bytes": {"type": ["integer", "null"]},
                        "lag": {"type": ["integer", "null"], "description": "Sources: records not yet committed (a topic source's group lag)."},
                        "checkpoint_ms": {"type": ["integer", "null"], "description": "Sources that save their position (topics, files): when they last saved it with everything acknowledged by then, ms since the epoch."},
                        "watermark_ms": {"type": ["integer", "null"], "description": "Topic sources: the event time read up to, ms since the epoch: over the partitions with records left to read, the least of each one's newest record timestamp read; once all are caught up, the newest."},
                        "retrying": {"type": ["string", "null"], "description": "What the component retries now (a sink that cannot write: a full disk)."},
                        "retrying_since_ms": {"type": ["integer", "null"]},
                    },
                }}},
            },
            "Ingested": {
                "type": "object", "required": ["accepted", "dead_lettered"],
                "properties": {
                    "accepted": {"type": "integer", "description": "Events delivered through the pipeline."},
                    "dead_lettered": {"type": "integer", "description": "Lines that could not be decoded, sent to the dead-letter output."},
                },
            },
            "GroupList": {"type": "object", "required": ["groups"], "properties": {
                "groups": {"type": "array", "items": {"type": "string"}}}},
            "Group": {
                "type": "object",
                "required": ["group", "protocol", "generation", "members", "offsets"],
                "properties": {
                    "group": {"type": "string"},
                    "protocol": {"type": ["string", "null"], "enum": ["native", "kafka", null]},
                    "generation": {"type": "integer"},
                    "members": {"type": "array", "items": {
                        "type": "object",
                        "required": ["member_id", "client_id", "topics", "session_timeout_ms", "assignment"],
                        "properties": {
                            "member_id": {"type": "string"},
                            "client_id": {"type": "string"},
                            "topics": {"type": "array", "items": {"type": "string"}},
                            "session_timeout_ms": {"type": "integer"},
                            "assignment": {"type": "object", "additionalProperties": {
                                "type": "array", "items": {"type": "integer"}}},
                        },
                    }},
                    "offsets": {"type": "array", "items": {
                        "type": "object",
                        "required": ["topic", "partition", "committed", "high_watermark", "lag"],
                        "properties": {
                            "topic": {"type": "string"},
                            "partition": {"type": "integer"},
                            "committed": {"type": ["integer", "null"]},
                            "high_watermark": {"type": "integer"},
                            "lag": {"type": "integer"},
                        },
                    }},
                },
            },
            "WsRecord": record_schema(Some("record")),
            "WsSubscribed": {
                "type": "object", "required": ["type", "subscription", "policy", "partitions"],
                "properties": {
                    "type": {"const": "subscribed"},
                    "subscription": {"type": "integer"},
                    "policy": {"type": "string", "enum": ["drop_oldest", "conflate", "disconnect"]},
                    "snapshot": {"type": "boolean",
                        "description": "A snapshot comes first; `from` is where live records start."},
                    "partitions": {"type": "array", "items": {
                        "type": "object", "required": ["topic", "partition", "from"],
                        "properties": {"topic": {"type": "string"}, "partition": {"type": "integer"},
                            "from": {"type": "integer"}}}},
                },
            },
            "WsSnapshotEnd": {
                "type": "object", "required": ["type", "subscription", "partitions"],
                "description": "The snapshot is complete: every key's latest record below each \
                    partition's `next` was sent; the records that follow are live, from `next` on, \
                    with no gap and no duplicate.",
                "properties": {
                    "type": {"const": "snapshot_end"},
                    "subscription": {"type": "integer"},
                    "partitions": {"type": "array", "items": {
                        "type": "object", "required": ["topic", "partition", "next"],
                        "properties": {"topic": {"type": "string"}, "partition": {"type": "integer"},
                            "next": {"type": "integer"}}}},
                },
            },
            "WsGap": {
                "type": "object",
                "required": ["type", "subscription", "topic", "partition", "requested", "available_from"],
                "description": "Records from requested up to available_from are gone (retention).",
                "properties": {
                    "type": {"const": "gap"},
                    "subscription": {"type": "integer"},
                    "topic": {"type": "string"},
                    "partition": {"type": "integer"},
                    "requested": {"type": "integer"},
                    "available_from": {"type": "integer"},
                },
            },
            "WsDropped": {
                "type": "object", "required": ["type", "subscription", "count", "policy"],
                "description": "count records of the subscription were dropped or superseded by \
                    its policy since the last frame.",
                "properties": {
                    "type": {"const": "dropped"},
                    "subscription": {"type": "integer"},
                    "count": {"type": "integer"},
                    "policy": {"type": "string"},
                },
            },
            "WsError": {
                "type": "object", "required": ["type", "subscription", "code", "message"],
                "properties": {
                    "type": {"const": "error"},
                    "subscription": {"type": ["integer", "null"]},
                    "code": {"type": "string", "enum": codes},
                    "message": {"type": "string"},
                },
            },
        }},
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_is_documented_and_every_documented_operation_is_routed() {
        let doc = document();
        let routed: BTreeSet<(String, String)> = crate::api::routes()
            .into_iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.clone(), p.clone()))
            })
            .collect();
        assert_eq!(routed, documented);
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(v: &Value, refs: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        refs.push(r.clone());
                    }
                    m.values().for_each(|v| walk(v, refs));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, refs)),
                _ => {}
            }
        }
        let doc = document();
        let mut refs = Vec::new();
        walk(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(doc["components"]["schemas"].get(name).is_some(), "{r}");
        }
    }
}
