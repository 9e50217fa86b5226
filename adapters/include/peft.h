/* peft.h: adapters in Hugging Face PEFT's safetensors layout.
 * Tensors base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight and
 * ...mlp.{gate,up,down}_proj.lora_{A,B}.weight, F32; lora_A [r x in], lora_B [out x r];
 * the rows of q_proj's and k_proj's lora_B in Hugging Face's rotate-half order, so the file
 * applies unchanged to the HF layout of the base. __metadata__ (strings): r, lora_alpha,
 * target_modules, use_rslora, base_fingerprint. */
#ifndef QLORA_PEFT_H
#define QLORA_PEFT_H

#include <stddef.h>
#include <stdint.h>

#include "lora.h"

/* The adapter as a safetensors image (malloc'd, *len bytes). */
int peft_encode(const llama_lora *ad, const llama_config *c, uint64_t fingerprint, void **out,
                size_t *len, char *err, size_t errlen);
int peft_write(const char *path, const llama_lora *ad, const llama_config *c, uint64_t fingerprint,
               char *err, size_t errlen);
/* Reads path for model config c: names, shapes, rank and dtype (F32, F16, BF16) checked,
 * NaN/Inf refused. *fingerprint is 0 when the file has none. */
int peft_read(const char *path, llama_lora *ad, const llama_config *c, uint64_t *fingerprint,
              char *err, size_t errlen);

/* The two files of a PEFT adapter directory, from memory (no file I/O: the daemon serves
 * them over the wire; the tool reads and writes the directory). */

/* adapter_config.json for ad (malloc'd, NUL-terminated): peft_type LORA, task_type
 * CAUSAL_LM, r, lora_alpha, lora_dropout, target_modules (HF names), bias "none",
 * use_rslora, base_model_name_or_path (null when base_model is NULL). */
int peft_config_encode(const llama_lora *ad, const char *base_model, char **json, char *err, size_t errlen);
/* adapter_config.json (r, lora_alpha, use_rslora, target_modules, lora_dropout) and
 * adapter_model.safetensors (F32, F16 or BF16) checked against each other and against c;
 * NaN/Inf, bad header length, offsets out of range or overlapping, unknown dtype, missing
 * or extra tensors are refused with a message naming the file and tensor, and so is a
 * LoraConfig key that is not plain LoRA at its value (use_dora, alpha_pattern, a PiSSA
 * init_lora_weights...; docs/storage.md lists them). *fingerprint is
 * 0 when the safetensors metadata has none. */
int peft_import(const char *config_json, size_t config_len, const void *st, size_t st_len, const llama_config *c,
                llama_lora *ad, uint64_t *fingerprint, char *err, size_t errlen);

#endif
