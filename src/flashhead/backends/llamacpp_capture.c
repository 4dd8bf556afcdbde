/* llama.cpp's eval callback for the llama.cpp backend (backends/llamacpp.py compiles this file
   through kernels/native.py `build`, into its own small library).

   fh_result_norm observes only the graph node named "result_norm" (the final normed hidden state,
   [d, n_outputs] fp32), copies it out, and returns false so that the graph stops before the dense
   output projection. ggml's functions come in through the struct (the backend takes them from
   llama-cpp-python's ggml library), so this file links against nothing.
*/
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef const char *(*name_fn)(const void *tensor);
typedef size_t (*nbytes_fn)(const void *tensor);
typedef void (*get_fn)(const void *tensor, void *data, size_t offset, size_t size);

struct fh_capture {        /* mirrored by _Capture in backends/llamacpp.py */
    name_fn get_name;      /* ggml_get_name */
    nbytes_fn nbytes;      /* ggml_nbytes */
    get_fn tensor_get;     /* ggml_backend_tensor_get */
    float *dst;            /* where the hidden states go */
    int64_t capacity;      /* bytes available at dst */
    int64_t got;           /* bytes copied since reset to 0 (-1: more than capacity) */
    int32_t active;        /* 0: observe nothing (llama.cpp runs its dense head) */
};

bool fh_result_norm(void *tensor, bool ask, void *user) {
    struct fh_capture *c = (struct fh_capture *)user;
    if (!c->active) return false;
    const char *name = c->get_name(tensor);
    const bool mine = name && strcmp(name, "result_norm") == 0;
    if (ask) return mine;
    if (!mine) return true;
    const size_t size = c->nbytes(tensor);
    if (c->got < 0 || c->got + (int64_t)size > c->capacity) {
        c->got = -1;
        return false;
    }
    /* appended: a batch split into several micro-batches gives one graph (and one node) each */
    c->tensor_get(tensor, (char *)c->dst + c->got, 0, size);
    c->got += (int64_t)size;
    return false;   /* stop: the dense projection after result_norm is never computed */
}
