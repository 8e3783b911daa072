/* Reading everything a GGUF or safetensors handle offers, as a consumer would: every key
 * through every getter, every array element, every tensor's bytes and its fp32 conversion.
 * Shared by the fuzz targets and test-formats-corrupt, so both hold a handle that opened to the
 * same promises. A broken promise (a name its own lookup does not find, an array element that
 * cannot be read) prints what broke and aborts, which fails a fuzz run and a unit test alike. */
#pragma once

#include <stdint.h>

#include "engine/gguf.h"
#include "engine/safetensors.h"

/* Each returns a hash of what it read, so two handles of the same bytes can be compared. */
uint64_t dsa_test_touch_tensor(const struct dsa_tensor_view *t);
uint64_t dsa_test_touch_gguf(const struct dsa_gguf *g);
uint64_t dsa_test_touch_safetensors(const struct dsa_safetensors *s);
