/* Cleanup functions for json-c objects, shared by the engine's JSON readers (config.json,
 * tokenizer.json, safetensors headers). */
#pragma once

#include <json-c/json.h>

#include "basic/macro.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(struct json_object *, json_object_put);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct json_tokener *, json_tokener_free);
