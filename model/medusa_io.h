/* Medusa head files: export to the Medusa v1 layout (config.json + medusa_lm_head.safetensors, keys
 * {h}.{l}.linear.weight|bias and {h}.{L}.weight) or vLLM's (blocks.{h}.layers.{l}.weight|bias,
 * lm_heads.{h}.weight), and import of either. Truncated heads also write token_map (I64 [Vh]) and the head
 * vocabulary: vLLM's "truncated_vocab_size", or "medusa_head_vocab" in the v1 layout, which only medusa-c
 * reads (the reference Medusa code loads full-vocabulary heads only). */
#ifndef MEDUSA_MEDUSA_IO_H
#define MEDUSA_MEDUSA_IO_H

#include "medusa.h"

typedef enum { MEDUSA_FORMAT_V1, MEDUSA_FORMAT_VLLM } MedusaFormat;

/* Writes dir/config.json and the weights file; dtype DT_F32 or DT_BF16. base_name goes into the config. The two
 * are written into a temp directory beside dir (dir.tmp<pid>) that replaces dir whole: dir holds one export's files
 * or the other's, never a mix, whenever the process is killed. An existing dir may hold only an export's files. */
void medusa_export(const MedusaHeads *m, const char *dir, MedusaFormat format, DType dtype, const char *base_name);

/* Reads heads exported in either format from dir, checks them against the base model's hidden size and
 * vocabulary, and initialises m on backend be. */
void medusa_import(MedusaHeads *m, const char *dir, const Backend *be, int hidden, int vocab);
/* The shape of exported heads, from dir/config.json alone (checked as medusa_import checks it). */
MedusaShape medusa_import_shape(const char *dir, int hidden, int vocab);

#endif
