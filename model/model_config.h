/* model_config.h: a Hugging Face config.json into a llama_config, private to model/.
 * model_config.c knows, per architecture, every key transformers' config and modeling
 * code read for it, their defaults, and which values this code runs exactly; model.c
 * knows the tensors. */
#ifndef QLORA_MODEL_CONFIG_H
#define QLORA_MODEL_CONFIG_H

#include <stddef.h>

#include "gguf.h"
#include "json.h"
#include "model.h"

/* Fills c (derived sizes too) and *tied from config.json's tree j read from path. -1 with
 * a message naming path and the key otherwise: an unknown architecture or key, a key the
 * architecture does not read, a value whose computation is not implemented here. */
int hf_config_read(const json_value *j, const char *path, llama_config *c, int *tied, char *err, size_t errlen);

/* Fills c (derived sizes too; vocab_size 0 when the file does not say) from a GGUF file's
 * metadata (model_gguf.c), and *interleaved with whether its q/k rows are in RoPE's
 * interleaved pairs already (llama.cpp's converter permutes Llama's, not Qwen's). -1 with a
 * message naming the file, the byte offset and the key otherwise. */
int gguf_config_read(const gguf_file *f, llama_config *c, int *interleaved, char *err, size_t errlen);

#endif
